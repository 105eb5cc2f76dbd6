# mpirun -np 2 gives the same quantized weights and perplexities as one process, bit for bit:
# GPTQ 3-bit and GPTQ 3-bit + Q2N on the shipped model. The single process runs on the
# machine's default thread count, the ranks on one thread each (the results depend on neither).
# The same for --stream, in one process and in two; and GPTQ + Q2N in ten processes (more than
# the eight shards of the Hessian sum: a shard's running sum passes between ranks).
#   cmake -DEXE=q2n_llama -DMPI_EXE=q2n_llama_mpi "-DMPIRUN=mpiexec;-n;2;..."
#         "-DMPIRUN_MANY=mpiexec;-n;10;..." -DOUT=... -P mpi_same.cmake
set(_args --methods gptq --bits 3 --group 64 --nsamples 24 --eval-windows 37)
file(REMOVE_RECURSE ${OUT})
foreach(q off on)
  execute_process(COMMAND ${EXE} ${_args} --q2n ${q} --save ${OUT}/single_${q}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE single ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "one process, --q2n ${q}, failed (${rc}): ${err}")
  endif()
  execute_process(COMMAND ${MPIRUN} ${MPI_EXE} ${_args} --q2n ${q} --threads 1
                          --save ${OUT}/mpi_${q}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE mpi ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "two processes, --q2n ${q}, failed (${rc}): ${err}")
  endif()
  string(REGEX MATCHALL "\"ppl\":[0-9.e+-]+" ppl_single "${single}")
  string(REGEX MATCHALL "\"ppl\":[0-9.e+-]+" ppl_mpi "${mpi}")
  message(STATUS "--q2n ${q}: one process ${ppl_single}; two ${ppl_mpi}")
  list(LENGTH ppl_single n)
  if(NOT n EQUAL 2)
    message(FATAL_ERROR "expected the float and the gptq perplexity, got: ${single}")
  endif()
  if(NOT ppl_single STREQUAL ppl_mpi)
    message(FATAL_ERROR "FAIL: the perplexities differ")
  endif()
  execute_process(COMMAND ${CMAKE_COMMAND} -E compare_files
                          ${OUT}/single_${q}/model.safetensors ${OUT}/mpi_${q}/model.safetensors
                  RESULT_VARIABLE differ)
  if(NOT differ EQUAL 0)
    message(FATAL_ERROR "FAIL: the quantized weights differ (--q2n ${q})")
  endif()
  if(q STREQUAL "on" AND MPIRUN_MANY)
    execute_process(COMMAND ${MPIRUN_MANY} ${MPI_EXE} ${_args} --q2n ${q} --threads 1
                            --save ${OUT}/mpi10_${q}
                    RESULT_VARIABLE rc OUTPUT_VARIABLE many ERROR_VARIABLE err)
    if(NOT rc EQUAL 0)
      message(FATAL_ERROR "ten processes, --q2n ${q}, failed (${rc}): ${err}")
    endif()
    string(REGEX MATCHALL "\"ppl\":[0-9.e+-]+" ppl_many "${many}")
    message(STATUS "--q2n ${q}: ten processes ${ppl_many}")
    if(NOT ppl_single STREQUAL ppl_many)
      message(FATAL_ERROR "FAIL: the perplexities of ten processes differ")
    endif()
    execute_process(COMMAND ${CMAKE_COMMAND} -E compare_files
                            ${OUT}/single_${q}/model.safetensors ${OUT}/mpi10_${q}/model.safetensors
                    RESULT_VARIABLE differ)
    if(NOT differ EQUAL 0)
      message(FATAL_ERROR "FAIL: the quantized weights of ten processes differ")
    endif()
  endif()
  # --stream (the checkpoint read layer by layer) in one process and in two: the perplexities
  # of the in-memory run, and the same shards from both (their tensors equal the in-memory
  # model's: the doctest "the streaming pass gives the in-memory pass's weights ...").
  foreach(mode stream mpi_stream)
    set(_cmd ${EXE})
    if(mode STREQUAL "mpi_stream")
      set(_cmd ${MPIRUN} ${MPI_EXE} --threads 1)
    endif()
    execute_process(COMMAND ${_cmd} ${_args} --q2n ${q} --stream --save ${OUT}/${mode}_${q}
                    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
    if(NOT rc EQUAL 0)
      message(FATAL_ERROR "${mode}, --q2n ${q}, failed (${rc}): ${err}")
    endif()
    string(REGEX MATCHALL "\"ppl\":[0-9.e+-]+" ppl_stream "${out}")
    message(STATUS "--q2n ${q}: ${mode} ${ppl_stream}")
    if(NOT ppl_single STREQUAL ppl_stream)
      message(FATAL_ERROR "FAIL: the perplexities of ${mode} differ")
    endif()
  endforeach()
  file(GLOB _shards RELATIVE ${OUT}/stream_${q} ${OUT}/stream_${q}/*)
  list(LENGTH _shards n)
  if(n LESS 4)
    message(FATAL_ERROR "FAIL: --stream --save wrote ${n} files: ${_shards}")
  endif()
  foreach(f ${_shards})
    execute_process(COMMAND ${CMAKE_COMMAND} -E compare_files ${OUT}/stream_${q}/${f}
                            ${OUT}/mpi_stream_${q}/${f} RESULT_VARIABLE differ)
    if(NOT differ EQUAL 0)
      message(FATAL_ERROR "FAIL: ${f} differs between one and two streaming processes")
    endif()
  endforeach()
endforeach()
message(STATUS "PASSED")
