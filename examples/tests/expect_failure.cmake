# Runs CMD (a ;-list) and requires exit code EXIT_CODE and stderr matching REGEX.
#   cmake -DCMD=... -DEXIT_CODE=2 -DREGEX=... -P expect_failure.cmake
execute_process(COMMAND ${CMD} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message(STATUS "exit code ${rc}; stderr: ${err}")
if(NOT rc EQUAL EXIT_CODE)
  message(FATAL_ERROR "expected exit code ${EXIT_CODE}, got ${rc}\nstdout: ${out}")
endif()
if(NOT err MATCHES "${REGEX}")
  message(FATAL_ERROR "stderr does not match '${REGEX}'")
endif()
