# cmake -P script: compiling SOURCE must fail, and the first "error:" line of the compiler's
# output must contain EXPECT (so a misuse is reported by q2n's static_assert before any error
# from inside Eigen).
execute_process(COMMAND ${CXX} -std=c++17 -fsyntax-only -I${INCLUDE} -isystem ${EIGEN_INCLUDE} ${SOURCE}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(rc EQUAL 0)
  message(FATAL_ERROR "${SOURCE} compiled, but it must not")
endif()
string(REGEX MATCH "error:[^\n]*" first "${out}${err}")
string(FIND "${first}" "${EXPECT}" at)
if(at EQUAL -1)
  message(FATAL_ERROR "first error is not q2n's:\n  ${first}\nexpected it to contain: ${EXPECT}")
endif()
message("compile_fail: ok (${first})")
