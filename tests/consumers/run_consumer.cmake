# cmake -P script: builds and runs the consumer program through one consumption route.
# The consumers build unoptimized: what is tested is that each route finds, compiles and links
# the headers, and -O0 keeps the Eigen-heavy compiles short (each program still takes most of a
# minute, so each route builds one). find_package builds the quantizers with the safetensors
# I/O (q2n::io, which pulls in q2n::q2n) and the LAPACK backend (q2n::lapack);
# add_subdirectory the refinement alone (q2n::q2n);
# vendoring the same, with nothing but Eigen beside the copied headers.
# Each route compiles with the compiler of the build that runs it.
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "command failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
  message("${out}")
endfunction()

if(ROUTE STREQUAL "find_package")
  # Install the package into a private prefix, then consume it like any installed library.
  run(${CMAKE_COMMAND} --install ${Q2N_BINARY_DIR} --prefix ${WORK_DIR}/prefix)
  run(${CMAKE_COMMAND} -S ${CONSUMER_DIR} -B ${WORK_DIR}/build -DQ2N_ROUTE=find_package
      -DCMAKE_CXX_COMPILER=${CXX} -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix)
  run(${CMAKE_COMMAND} --build ${WORK_DIR}/build --target consumer_full)
  run(${WORK_DIR}/build/consumer_full ${WORK_DIR}/out.safetensors)
  # A component the package does not have is reported as missing, not silently accepted.
  file(WRITE ${WORK_DIR}/missing/CMakeLists.txt
    "cmake_minimum_required(VERSION 3.21)\nproject(m LANGUAGES CXX)\nfind_package(q2n CONFIG REQUIRED COMPONENTS nosuch)\n")
  execute_process(COMMAND ${CMAKE_COMMAND} -S ${WORK_DIR}/missing -B ${WORK_DIR}/missing/build
                  -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix RESULT_VARIABLE rc OUTPUT_QUIET ERROR_QUIET)
  if(rc EQUAL 0)
    message(FATAL_ERROR "find_package(q2n COMPONENTS nosuch) succeeded")
  endif()
elseif(ROUTE STREQUAL "add_subdirectory")
  run(${CMAKE_COMMAND} -S ${CONSUMER_DIR} -B ${WORK_DIR}/build -DQ2N_ROUTE=add_subdirectory
      -DCMAKE_CXX_COMPILER=${CXX} -DQ2N_SOURCE_DIR=${Q2N_SOURCE_DIR})
  run(${CMAKE_COMMAND} --build ${WORK_DIR}/build --target consumer)
  run(${WORK_DIR}/build/consumer)
elseif(ROUTE STREQUAL "vendored")
  # Copy include/ as a user vendoring the headers would: the refinement compiles with only
  # Eigen beside it (the quantizers would also need xsimd, the I/O nlohmann-json).
  file(COPY ${Q2N_SOURCE_DIR}/include/ DESTINATION ${WORK_DIR}/vendor)
  run(${CXX} -std=c++17 -O0 -I${WORK_DIR}/vendor -I${EIGEN_INCLUDE}
      ${CONSUMER_DIR}/consumer.cpp -o ${WORK_DIR}/consumer)
  run(${WORK_DIR}/consumer)
else()
  message(FATAL_ERROR "unknown ROUTE '${ROUTE}'")
endif()
