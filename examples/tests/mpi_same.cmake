# mpirun -np 2 gives the same quantized weights and perplexities as one process, bit for bit:
# GPTQ 3-bit and GPTQ 3-bit + Q2N on the shipped model. The single process runs on the
# machine's default thread count, the ranks on one thread each (the results depend on neither).
# The same for --stream, in one process and in two; and GPTQ + Q2N in ten processes (more than
# the eight shards of the Hessian sum: a shard's running sum passes between ranks).
#   cmake -DEXE=q2n_llama -DMPI_EXE=q2n_llama_mpi "-DMPIRUN=mpiexec;-n;2;..."
#         "-DMPIRUN_MANY=mpiexec;-n;10;..." -DOUT=... -P mpi_same.cmake
set(_args --methods gptq --bits 3 --group 64 --nsamples 16 --eval-windows 19)
# Runs ARGN with _args, --q2n q and --save OUT/name; checks that it gives the single process's
# perplexities (ppl_single) and saved weights.
function(expect_single name what q)
  execute_process(COMMAND ${ARGN} ${_args} --q2n ${q} --save ${OUT}/${name}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what}, --q2n ${q}, failed (${rc}): ${err}")
  endif()
  string(REGEX MATCHALL "\"ppl\":[0-9.e+-]+" ppl "${out}")
  message(STATUS "--q2n ${q}: ${what} ${ppl}")
  if(NOT ppl_single STREQUAL ppl)
    message(FATAL_ERROR "FAIL: the perplexities of ${what} differ")
  endif()
  execute_process(COMMAND ${CMAKE_COMMAND} -E compare_files
                          ${OUT}/single_${q}/model.safetensors ${OUT}/${name}/model.safetensors
                  RESULT_VARIABLE differ)
  if(NOT differ EQUAL 0)
    message(FATAL_ERROR "FAIL: the quantized weights of ${what} differ (--q2n ${q})")
  endif()
endfunction()
file(REMOVE_RECURSE ${OUT})
foreach(q off on)
  execute_process(COMMAND ${EXE} ${_args} --q2n ${q} --save ${OUT}/single_${q}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE single ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "one process, --q2n ${q}, failed (${rc}): ${err}")
  endif()
  string(REGEX MATCHALL "\"ppl\":[0-9.e+-]+" ppl_single "${single}")
  message(STATUS "--q2n ${q}: one process ${ppl_single}")
  list(LENGTH ppl_single n)
  if(NOT n EQUAL 2)
    message(FATAL_ERROR "expected the float and the gptq perplexity, got: ${single}")
  endif()
  expect_single(mpi_${q} "two processes" ${q} ${MPIRUN} ${MPI_EXE} --threads 1)
  if(q STREQUAL "on" AND MPIRUN_MANY)
    expect_single(mpi10_${q} "ten processes" ${q} ${MPIRUN_MANY} ${MPI_EXE} --threads 1)
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
