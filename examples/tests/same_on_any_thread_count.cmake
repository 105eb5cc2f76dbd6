# cmake -P script: runs q2n-layer on INPUT with OMP_NUM_THREADS=1 and =2 and requires the two
# output files to be byte-identical (quantized weights, m, and everything else written).
#   -DEXE=q2n-layer -DINPUT=in.safetensors -DOUT=dir -DARGS="--method;gptq;..."
file(MAKE_DIRECTORY ${OUT})
foreach(threads 1 2)
  execute_process(COMMAND ${CMAKE_COMMAND} -E env OMP_NUM_THREADS=${threads}
                          ${EXE} --input ${INPUT} --output ${OUT}/threads${threads}.safetensors ${ARGS}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "q2n-layer on ${threads} thread(s) failed (${rc}):\n${out}\n${err}")
  endif()
  message("${threads} thread(s): ${out}")
endforeach()
execute_process(COMMAND ${CMAKE_COMMAND} -E compare_files ${OUT}/threads1.safetensors
                        ${OUT}/threads2.safetensors RESULT_VARIABLE same)
if(NOT same EQUAL 0)
  message(FATAL_ERROR "FAIL: q2n-layer wrote different bytes on 1 and 2 threads")
endif()
message("PASSED: byte-identical on 1 and 2 threads")
