# quarot end to end on the shipped model, W4A4KV4 with and without Q2N, on one thread and on
# two: the same perplexities to the last digit of the JSON, and every quarot line names the
# method quarot and carries the activation and KV widths and the rotated float model's
# perplexity.
#   cmake -DEXE=q2n_llama -P quarot_threads.cmake
set(_args --methods quarot --bits 4 --a-bits 4 --kv-bits 4 --q2n both --nsamples 4
          --eval-windows 2)
foreach(t 1 2)
  execute_process(COMMAND ${EXE} ${_args} --threads ${t}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out_${t} ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "FAIL: --threads ${t} failed (${rc}): ${err}")
  endif()
  string(REGEX MATCHALL "\"ppl\":[0-9.e+-]+" ppl_${t} "${out_${t}}")
endforeach()
list(LENGTH ppl_1 n)
if(NOT n EQUAL 3)
  message(FATAL_ERROR "FAIL: expected the float and two quarot perplexities, got: ${out_1}")
endif()
message(STATUS "one thread ${ppl_1}; two threads ${ppl_2}")
if(NOT ppl_1 STREQUAL ppl_2)
  message(FATAL_ERROR "FAIL: the perplexities differ between one and two threads")
endif()
string(REGEX MATCHALL "\"a_bits\":4,\"a_clip\":1.0,[^\n]*\"kv_bits\":4,\"kv_clip\":1.0,[^\n]*\"method\":\"quarot\",[^\n]*\"rotated_float_ppl\":[0-9]"
       lines "${out_1}")
list(LENGTH lines m)
if(NOT m EQUAL 2)
  message(FATAL_ERROR "FAIL: expected two quarot JSON lines with a_bits, kv_bits and rotated_float_ppl, got: ${out_1}")
endif()
message(STATUS "PASSED")
