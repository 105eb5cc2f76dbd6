# cmake -P script: builds one libFuzzer harness with clang (ASan + UBSan + the fuzzer) and runs
# it over its committed seed corpus plus MAX_SECONDS of new inputs.
#   -DCLANG=clang++ -DSOURCE=... -DNAME=... -DINCLUDES="a;b" -DCORPUS=dir -DWORK_DIR=dir
#   -DMAX_SECONDS=10
file(MAKE_DIRECTORY ${WORK_DIR}/new)
set(exe ${WORK_DIR}/${NAME})
if(NOT EXISTS ${exe} OR ${SOURCE} IS_NEWER_THAN ${exe})
  set(inc "")
  foreach(dir IN LISTS INCLUDES)
    list(APPEND inc -I${dir})
  endforeach()
  execute_process(COMMAND ${CLANG} -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined
                          -fno-sanitize-recover=all ${inc} ${SOURCE} -o ${exe}
                  RESULT_VARIABLE rc ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "building ${NAME} failed:\n${err}")
  endif()
endif()
# New inputs go to WORK_DIR/new (the committed corpus is only read); the harness runs in
# WORK_DIR and writes its scratch files there. -timeout: no input may
# take 10 s (inputs take milliseconds; a tighter limit fires falsely on a loaded machine);
# -rss_limit_mb: nor 2 GB.
execute_process(COMMAND ${exe} ${WORK_DIR}/new ${CORPUS} -max_total_time=${MAX_SECONDS}
                        -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
                WORKING_DIRECTORY ${WORK_DIR} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
string(REGEX MATCH "stat::number_of_executed_units: *[0-9]+" runs "${err}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${NAME} found a failing input (exit ${rc}):\n${err}")
endif()
message("fuzz ${NAME}: ok (${runs})")
