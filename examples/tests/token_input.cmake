# A token-id file drives the same run as the equivalent bytes: q2n_llama on the bundled texts
# and on the same bytes as ids (calibration I32 [1024, 256] safetensors, evaluation a raw
# uint16 stream) must report identical perplexities, float and GPTQ ± Q2N.
#   cmake -DEXE=q2n_llama -DFIXTURES=... -P token_input.cmake
set(_common --methods gptq --bits 4 --group 64 --q2n both --nsamples 8 --eval-windows 32)
execute_process(COMMAND ${EXE} ${_common}
                RESULT_VARIABLE rc OUTPUT_VARIABLE text_out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "the run on text failed (${rc}): ${err}")
endif()
execute_process(COMMAND ${EXE} ${_common} --calib-tokens ${FIXTURES}/kjv_train.safetensors
                        --eval-tokens ${FIXTURES}/kjv_valid.u16 --token-dtype uint16
                RESULT_VARIABLE rc OUTPUT_VARIABLE token_out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "the run on token ids failed (${rc}): ${err}")
endif()

# "method q2n ppl" of every report line, in order.
function(ppls out var)
  string(REGEX MATCHALL "{[^\n]*\"ppl\"[^\n]*}" lines "${out}")
  set(result "")
  foreach(line IN LISTS lines)
    string(JSON m GET "${line}" method)
    string(JSON q GET "${line}" q2n)
    string(JSON p GET "${line}" ppl)
    list(APPEND result "${m} q2n=${q} ppl=${p}")
  endforeach()
  set(${var} "${result}" PARENT_SCOPE)
endfunction()
ppls("${text_out}" from_text)
ppls("${token_out}" from_tokens)
list(LENGTH from_text n)
message(STATUS "text:   ${from_text}")
message(STATUS "tokens: ${from_tokens}")
if(NOT n EQUAL 3)
  message(FATAL_ERROR "expected 3 runs (float, gptq, gptq + q2n), got ${n}: ${text_out}")
endif()
if(NOT from_text STREQUAL from_tokens)
  message(FATAL_ERROR "token ids and text give different perplexities")
endif()
message(STATUS "PASSED")
