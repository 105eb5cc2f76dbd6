# Quantizes with --save DIR, then evaluates DIR with --model DIR --methods none: the two
# perplexities must agree (the saved F32 weights are exactly the evaluated ones).
#   cmake -DEXE=q2n_llama -DMODEL=... -DOUT=... -P saved_roundtrip.cmake
set(_common --seqlen 64 --eval-windows 4 --threads 1)
execute_process(COMMAND ${EXE} --model ${MODEL} --methods gptq --bits 4 --group 8 --q2n on
                        --nsamples 4 ${_common} --save ${OUT}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "quantization failed (${rc}): ${err}")
endif()
string(REGEX MATCH "{\"[^\n]*\"method\":\"gptq\"[^\n]*}" line "${out}")
string(JSON ppl_quant GET "${line}" ppl)
string(JSON q2n GET "${line}" q2n)
execute_process(COMMAND ${EXE} --model ${OUT} --methods none ${_common}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out2 ERROR_VARIABLE err2)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "evaluating the saved model failed (${rc}): ${err2}")
endif()
string(REGEX MATCH "{\"[^\n]*\"method\":\"none\"[^\n]*}" line2 "${out2}")
string(JSON ppl_saved GET "${line2}" ppl)
message(STATUS "gptq w4 +q2n (${q2n}): ppl ${ppl_quant}; saved and reloaded: ppl ${ppl_saved}")
if(NOT ppl_quant STREQUAL ppl_saved)
  message(FATAL_ERROR "the reloaded model evaluates differently: ${ppl_quant} vs ${ppl_saved}")
endif()
