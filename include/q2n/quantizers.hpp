#pragma once
/// \file quantizers.hpp
/// All quantizers q2n ships, and the Q2N plug-in for their results.
///
/// | header                   | provides                                                        |
/// |--------------------------|-----------------------------------------------------------------|
/// | quantizers/options.hpp   | UniformOptions, DampingOptions, SweepOptions (shared parts)     |
/// | quantizers/uniform.hpp   | fit_uniform, quantize_uniform: GPTQ's uniform affine quantizer  |
/// | quantizers/rtn.hpp       | rtn: round to nearest                                           |
/// | quantizers/gptq.hpp      | gptq                                                            |
/// | quantizers/owq.hpp       | owq, owq_outlier_count                                          |
/// | quantizers/pbllm.hpp     | pbllm, pbllm_binarized_count                                    |
/// | quantizers/leanquant.hpp | leanquant, gptq_codebook: GPTQ on a per-row non-uniform grid    |
/// | quantizers/quip.hpp      | quip: incoherence processing (transforms.hpp), LDLQ, greedy     |
/// | projection.hpp           | refine, fold, the storage model (storage.hpp), the null space   |
///
/// \code
/// #include <q2n/quantizers.hpp>
/// q2n::GptqOptions o;
/// o.grid.bits = 3;
/// o.act_order = true;
/// auto res = q2n::gptq(W, H, o);
/// auto ns  = q2n::NullSpace<float>::compute(abar);
/// auto ref = q2n::refine(res, W, ns);   // m folded into res.storage's scales
/// \endcode

#include <q2n/projection.hpp>
#include <q2n/quantizers/gptq.hpp>
#include <q2n/quantizers/leanquant.hpp>
#include <q2n/quantizers/options.hpp>
#include <q2n/quantizers/owq.hpp>
#include <q2n/quantizers/pbllm.hpp>
#include <q2n/quantizers/quip.hpp>
#include <q2n/quantizers/rtn.hpp>
#include <q2n/quantizers/uniform.hpp>
