#pragma once
/// \file quantizers.hpp
/// All reference quantizers and the Q2N plug-in for their results.
///
/// | header                   | provides                                                      |
/// |--------------------------|---------------------------------------------------------------|
/// | quantizers/uniform.hpp   | fit_uniform, quantize_uniform: GPTQ's uniform affine quantizer |
/// | quantizers/rtn.hpp       | rtn: round to nearest                                          |
/// | quantizers/gptq.hpp      | gptq                                                           |
/// | quantizers/owq.hpp       | owq, owq_outlier_count                                         |
/// | quantizers/pbllm.hpp     | pbllm                                                          |
/// | quantizers/result.hpp    | QuantResult, QuantStorage, dequantize, full_precision_result   |
/// | quantizers/refine.hpp    | refine_quantized, fold_equivalent_vector                       |
///
/// \code
/// #include <q2n/quantizers.hpp>
/// auto res = q2n::gptq(W, H, {.bits = 3, .groupsize = 128, .act_order = true});
/// auto ns  = q2n::NullSpace<float>::compute(abar);
/// auto ref = q2n::refine_quantized(res, W, ns);   // diag(m) Q, folded into the scales
/// \endcode

#include <q2n/quantizers/gptq.hpp>
#include <q2n/quantizers/kernel_path.hpp>
#include <q2n/quantizers/owq.hpp>
#include <q2n/quantizers/pbllm.hpp>
#include <q2n/quantizers/refine.hpp>
#include <q2n/quantizers/result.hpp>
#include <q2n/quantizers/rtn.hpp>
#include <q2n/quantizers/uniform.hpp>
