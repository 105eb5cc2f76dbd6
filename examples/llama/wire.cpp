/// \file wire.cpp
/// The bytes of a LinearResult (wire.hpp), written once here for every program that links
/// q2n_llama_quant: the transforms and storage forms it walks are instantiated in this file only.

#include "wire.hpp"

#include <q2n/storage.hpp>
#include <q2n/transforms.hpp>

#include <memory>
#include <optional>

namespace llama {
namespace {

using Transform = q2n::OrthogonalTransform<float>;
enum class TransformKind : std::uint8_t { none, hadamard, kronecker, dense };

void put_transform(Wire& w, const std::shared_ptr<const Transform>& t) {
  if (!t) return w.put(TransformKind::none);
  if (auto h = dynamic_cast<const q2n::HadamardTransform<float>*>(t.get())) {
    w.put(TransformKind::hadamard);
    w.put<std::int64_t>(h->size());
    w.put(h->table());
    w.put(h->signs());
  } else if (auto k = dynamic_cast<const q2n::KroneckerTransform<float>*>(t.get())) {
    w.put(TransformKind::kronecker);
    w.put(k->left());
    w.put(k->right());
    w.put(k->perm_in());
    w.put(k->perm_out());
  } else {
    w.put(TransformKind::dense);
    if (auto d = dynamic_cast<const q2n::DenseTransform<float>*>(t.get())) {
      w.put(d->matrix());
    } else {
      Eigen::MatrixXf m = Eigen::MatrixXf::Identity(t->size(), t->size());
      t->apply(m, false);
      w.put(m);
    }
  }
}

std::shared_ptr<const Transform> get_transform(Wire& w) {
  switch (w.get<TransformKind>()) {
    case TransformKind::none: return nullptr;
    case TransformKind::hadamard: {
      const auto n = w.get<std::int64_t>();
      const Eigen::MatrixXd table = w.get_matrix<Eigen::MatrixXf>().cast<double>();
      return std::make_shared<q2n::HadamardTransform<float>>(n, table, w.get_vector<std::int8_t>());
    }
    case TransformKind::kronecker: {
      auto a = w.get_matrix<Eigen::MatrixXf>();
      auto b = w.get_matrix<Eigen::MatrixXf>();
      auto in = w.get_vector<int>();
      return std::make_shared<q2n::KroneckerTransform<float>>(std::move(a), std::move(b),
                                                               std::move(in), w.get_vector<int>());
    }
    case TransformKind::dense:
      return std::make_shared<q2n::DenseTransform<float>>(w.get_matrix<Eigen::MatrixXf>());
  }
  throw std::runtime_error("llama::Wire: unknown transform kind");
}

template <class T>
void put_optional(Wire& w, const std::optional<T>& v, void (*put)(Wire&, const T&)) {
  w.put<std::uint8_t>(v ? 1 : 0);
  if (v) put(w, *v);
}
template <class T>
std::optional<T> get_optional(Wire& w, T (*get)(Wire&)) {
  if (!w.get<std::uint8_t>()) return std::nullopt;
  return get(w);
}

using Mat = Eigen::MatrixXf;

void put_storage(Wire& w, const q2n::QuantStorage<float>& s) {
  w.put(s.method);
  w.put<std::int64_t>(s.rows);
  w.put<std::int64_t>(s.cols);
  put_optional<q2n::UniformGrid<float>>(w, s.uniform, [](Wire& w, const q2n::UniformGrid<float>& g) {
    w.put(g.bits), w.put(g.form), w.put(g.codes), w.put(g.scales), w.put(g.zeros);
    w.put(g.offsets), w.put(g.g_idx), w.put(g.sym);
  });
  put_optional<q2n::Codebook<float>>(w, s.codebook, [](Wire& w, const q2n::Codebook<float>& c) {
    w.put(c.bits), w.put(c.codes), w.put(c.values);
  });
  put_optional<q2n::FullPrecisionColumns<float>>(
      w, s.full_precision, [](Wire& w, const q2n::FullPrecisionColumns<float>& f) {
        w.put(f.columns), w.put(f.values);
      });
  put_optional<q2n::BinarizedEntries<float>>(w, s.binarized, [](Wire& w, const q2n::BinarizedEntries<float>& b) {
    w.put(b.salient), w.put(b.signs), w.put(b.alpha), w.put(b.mean);
    w.put<std::int64_t>(b.groupsize);
  });
  put_transform(w, s.transforms.output);
  put_transform(w, s.transforms.input);
  w.put(s.transforms.input_scale);
  w.put(s.perm);
}

q2n::QuantStorage<float> get_storage(Wire& w) {
  q2n::QuantStorage<float> s;
  s.method = w.get_string();
  s.rows = w.get<std::int64_t>();
  s.cols = w.get<std::int64_t>();
  s.uniform = get_optional<q2n::UniformGrid<float>>(w, [](Wire& w) {
    q2n::UniformGrid<float> g;
    g.bits = w.get<int>();
    g.form = w.get<q2n::AffineForm>();
    g.codes = w.get_matrix<q2n::CodeMatrix>();
    g.scales = w.get_matrix<Mat>();
    g.zeros = w.get_matrix<Mat>();
    g.offsets = w.get_matrix<Mat>();
    g.g_idx = w.get_matrix<Eigen::VectorXi>();
    g.sym = w.get<bool>();
    return g;
  });
  s.codebook = get_optional<q2n::Codebook<float>>(w, [](Wire& w) {
    q2n::Codebook<float> c;
    c.bits = w.get<int>();
    c.codes = w.get_matrix<q2n::CodeMatrix>();
    c.values = w.get_matrix<Mat>();
    return c;
  });
  s.full_precision = get_optional<q2n::FullPrecisionColumns<float>>(w, [](Wire& w) {
    q2n::FullPrecisionColumns<float> f;
    f.columns = w.get_matrix<Eigen::VectorXi>();
    f.values = w.get_matrix<Mat>();
    return f;
  });
  s.binarized = get_optional<q2n::BinarizedEntries<float>>(w, [](Wire& w) {
    q2n::BinarizedEntries<float> b;
    b.salient = w.get_matrix<q2n::CodeMatrix>();
    b.signs = w.get_matrix<Eigen::Matrix<std::int8_t, Eigen::Dynamic, Eigen::Dynamic>>();
    b.alpha = w.get_matrix<Mat>();
    b.mean = w.get_matrix<Mat>();
    b.groupsize = w.get<std::int64_t>();
    return b;
  });
  s.transforms.output = get_transform(w);
  s.transforms.input = get_transform(w);
  s.transforms.input_scale = w.get_matrix<Eigen::VectorXf>();
  s.perm = w.get_matrix<Eigen::VectorXi>();
  return s;
}

// (Structs go member by member: their padding bytes are not values.)
void put_result(Wire& w, const q2n::QuantResult<float>& r) {
  w.put(r.Q);
  put_storage(w, r.storage);
  const q2n::QuantDiagnostics& d = r.diagnostics;
  w.put(d.loss), w.put(d.percdamp), w.put(d.damping), w.put(d.retries), w.put(d.dead_columns);
  w.put(d.seconds);
}

void get_result(Wire& w, q2n::QuantResult<float>& r) {
  r.Q = w.get_matrix<Mat>();
  r.storage = get_storage(w);
  q2n::QuantDiagnostics& d = r.diagnostics;
  d.loss = w.get<double>();
  d.percdamp = w.get<double>();
  d.damping = w.get<double>();
  d.retries = w.get<int>();
  d.dead_columns = w.get<std::int64_t>();
  d.seconds = w.get<q2n::QuantDiagnostics::Seconds>();
}

}  // namespace

void put(Wire& w, const LinearResult& r) {
  put_result(w, r.quantized);
  w.put<std::uint8_t>(r.refined ? 1 : 0);
  if (r.refined) {
    put_result(w, *r.refined);
    w.put(r.refined->m);
    w.put(r.refined->cut.found);
    w.put<std::int64_t>(r.refined->cut.kept);
  }
  w.put(r.err_before), w.put(r.err_after), w.put(r.refine_seconds);
}

LinearResult get_linear_result(Wire& w) {
  LinearResult r;
  get_result(w, r.quantized);
  if (w.get<std::uint8_t>()) {
    r.refined.emplace();
    get_result(w, *r.refined);
    r.refined->m = w.get_matrix<Eigen::VectorXf>();
    r.refined->cut.found = w.get<bool>();
    r.refined->cut.kept = w.get<std::int64_t>();
  }
  r.err_before = w.get<double>();
  r.err_after = w.get<double>();
  r.refine_seconds = w.get<double>();
  return r;
}

}  // namespace llama
