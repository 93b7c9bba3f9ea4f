// The CPU direct kernel (see cpu_direct.py): each query attends exactly its own keys, given as runs of
// consecutive tokens, with no tile of gathered keys around them. Built at first use by
// torch.utils.cpp_extension; the ops land in torch.ops.diffattn_direct.
//
// Layouts: q, v, out [B, S, H, D] fp32 contiguous; lse [B, S, H] fp32; runs [S, R] int32, the first token of
// each of a query's R runs of run_len keys (a run never leaves its row of W tokens, W the grid's last axis);
// kt [B, H, S / W, D, W + PAD]: the keys transposed row by row, so that a run's keys are consecutive floats
// for every d, and the D rows a query reads lie W + PAD floats apart (with kt [B, H, D, S] they lay S floats
// apart, a page per d from 32x32 tokens on: the row layout ran 6-25% faster at window 8, measured).
//
// Scores are computed 16 keys at a time (one 16-lane vector per run, or per two runs of 8), four vectors in
// flight to hide the FMA latency; softmax in two passes over the query's scores; the output accumulates
// p * v rows. GCC/Clang vector extensions: AVX-512 where the build targets it, narrower vectors elsewhere.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <climits>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
typedef float v8 __attribute__((vector_size(32)));

constexpr int64_t PAD = 16;     // kt row padding: a 16-lane load from any key of a row stays inside it
constexpr int64_t QBLOCK = 32;  // queries per parallel work item
constexpr int64_t SERIAL_FLOATS = 1 << 20;  // key transpositions up to this many floats per thread run serially

inline v16 load16(const float* p) { v16 x; std::memcpy(&x, p, sizeof x); return x; }
inline void store16(float* p, v16 x) { std::memcpy(p, &x, sizeof x); }
inline v16 load8x2(const float* a, const float* b) {
  v8 x, y;
  std::memcpy(&x, a, sizeof x);
  std::memcpy(&y, b, sizeof y);
  return __builtin_shufflevector(x, y, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}
inline float hmax(v16 x) {  // halving tree (4 steps); with a NaN score the query's output is NaN either way
  for (int w = 8; w >= 1; w /= 2) {
    v16 y;
    for (int i = 0; i < 16; i++) y[i] = x[(i + w) % 16];
    x = y > x ? y : x;
  }
  return x[0];
}
inline float hsum(v16 x) {
  for (int w = 8; w >= 1; w /= 2) {
    v16 y;
    for (int i = 0; i < 16; i++) y[i] = x[(i + w) % 16];
    x += y;
  }
  return x[0];
}

// exp(x) for x <= 0 (a score minus the row's max): Cephes' range reduction and degree-6 polynomial (about 1 ulp);
// 0 below -87.3 (so -inf, a padded lane, gives 0), NaN stays NaN.
inline v16 exp_nonpos(v16 x) {
  const v16 t = x * 1.44269504088896341f + 0.5f;
  v16 n = __builtin_convertvector(__builtin_convertvector(t, v16i), v16);
  n = n > t ? n - 1.0f : n;  // floor
  const v16 r = x - n * 0.693359375f + n * 2.12194440e-4f;
  v16 p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  v16i bits = (__builtin_convertvector(n, v16i) + 127) << 23;
  v16 scale;
  std::memcpy(&scale, &bits, sizeof scale);
  const v16 zero = {};
  return x < -87.3f ? zero : p * scale;
}

// acc[0:16*DV] = sum over the query's keys of p_j * v_j (two accumulator sets, even and odd keys)
template <int DV>
void accumulate(const float* vb, int64_t HD, const int32_t* run, int64_t R, int64_t L, int64_t LC, const float* p,
                float* acc) {
  v16 a[DV] = {}, b[DV] = {};
  for (int64_t r = 0; r < R; r++) {
    const float* vr = vb + static_cast<int64_t>(run[r]) * HD;
    const float* pr = p + r * LC;
    int64_t j = 0;
    for (; j + 1 < L; j += 2) {
      const float pj = pr[j], pk = pr[j + 1];
      const float* x = vr + j * HD;
      const float* y = x + HD;
      for (int c = 0; c < DV; c++) {
        a[c] += pj * load16(x + 16 * c);
        b[c] += pk * load16(y + 16 * c);
      }
    }
    if (j < L) {
      const float pj = pr[j];
      const float* x = vr + j * HD;
      for (int c = 0; c < DV; c++) a[c] += pj * load16(x + 16 * c);
    }
  }
  for (int c = 0; c < DV; c++) store16(acc + 16 * c, a[c] + b[c]);
}

void accumulate_any(const float* vb, int64_t HD, int64_t D, const int32_t* run, int64_t R, int64_t L, int64_t LC,
                    const float* p, float* acc) {
  std::fill(acc, acc + D, 0.f);
  for (int64_t r = 0; r < R; r++) {
    const float* vr = vb + static_cast<int64_t>(run[r]) * HD;
    for (int64_t j = 0; j < L; j++) {
      const float pj = p[r * LC + j];
      const float* x = vr + j * HD;
      for (int64_t i = 0; i < D; i++) acc[i] += pj * x[i];
    }
  }
}

// where token t's key column starts in one head's kt ([S / W, D, WP]): its row's block, then its column
inline int32_t key_offset(int64_t t, int64_t W, int64_t D, int64_t WP) {
  return static_cast<int32_t>((t / W) * D * WP + t % W);
}

// 16 score lanes of one query: the keys at kt offset lo (lanes 0-7 from lo and 8-15 from hi when paired), of which
// the first `valid` are keys
struct Chunk {
  int32_t lo, hi, valid;
};

// one query's scores, chunk after chunk into score[16 * c ...], four chunks in flight; returns the lane-wise max.
// qs: the query times the softmax scale [D].
template <bool PAIRED>
v16 scores(const float* kth, const Chunk* chunk, int64_t C, const float* qs, int64_t D, int64_t WP, float* score) {
  const v16 lanes = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  const v16 neg_inf = v16{} - INFINITY;
  v16 vmax = neg_inf;
  auto finish = [&](int64_t c, v16 x) {
    if (!PAIRED && chunk[c].valid < 16) x = lanes < static_cast<float>(chunk[c].valid) ? x : neg_inf;
    store16(score + 16 * c, x);
    vmax = x > vmax ? x : vmax;
  };
  auto lanes_at = [&](const Chunk& c, int64_t o) {
    return PAIRED ? load8x2(kth + c.lo + o, kth + c.hi + o) : load16(kth + c.lo + o);
  };
  int64_t c = 0;
  for (; c + 4 <= C; c += 4) {
    v16 s0 = {}, s1 = {}, s2 = {}, s3 = {};
    for (int64_t d = 0; d < D; d++) {
      const float qd = qs[d];
      const int64_t o = d * WP;
      s0 += qd * lanes_at(chunk[c], o);
      s1 += qd * lanes_at(chunk[c + 1], o);
      s2 += qd * lanes_at(chunk[c + 2], o);
      s3 += qd * lanes_at(chunk[c + 3], o);
    }
    finish(c, s0);
    finish(c + 1, s1);
    finish(c + 2, s2);
    finish(c + 3, s3);
  }
  for (; c < C; c++) {  // two chains: even and odd d
    v16 s0 = {}, s1 = {};
    int64_t d = 0;
    for (; d + 1 < D; d += 2) {
      s0 += qs[d] * lanes_at(chunk[c], d * WP);
      s1 += qs[d + 1] * lanes_at(chunk[c], (d + 1) * WP);
    }
    if (d < D) s0 += qs[d] * lanes_at(chunk[c], d * WP);
    finish(c, s0 + s1);
  }
  return vmax;
}

void check(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.dim() == dim && t.is_contiguous() && t.device().is_cpu(), name, " must be a contiguous CPU tensor of ",
              dim, " dims, got ", t.sizes(), " contiguous=", t.is_contiguous());
}

// k [B, S, H, D] fp32 -> kt [B, H, S / W, D, W + PAD], the pad zeroed
at::Tensor transpose_keys(const at::Tensor& k, int64_t W) {
  check(k, "k", 4);
  TORCH_CHECK(k.scalar_type() == at::kFloat, "k must be float32, got ", k.scalar_type());
  const int64_t B = k.size(0), S = k.size(1), H = k.size(2), D = k.size(3), WP = W + PAD;
  TORCH_CHECK(W >= 1 && S % W == 0, "row length ", W, " does not divide ", S, " tokens");
  const int64_t rows = S / W;
  at::Tensor kt = at::empty({B, H, rows, D, WP}, k.options());
  const float* src = k.data_ptr<float>();
  float* dst = kt.data_ptr<float>();
  // one OpenMP region is a stall risk on a busy machine (a descheduled thread holds the others at its end): small
  // transpositions (the 32x32 grid's 0.26 M floats: ~0.1 ms) run on the calling thread alone
  const int64_t grain = std::max<int64_t>(1, SERIAL_FLOATS / std::max<int64_t>(1, W * D));
  at::parallel_for(0, B * H * rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; item++) {
      const int64_t bh = item / rows, row = item % rows;
      const float* s0 = src + ((bh / H) * S + row * W) * H * D + (bh % H) * D;
      float* d0 = dst + item * D * WP;
      for (int64_t c = 0; c < W; c += 16) {  // 16 tokens at a time: 16 reads of D floats, D writes of 16
        const int64_t e = std::min(W, c + 16);
        for (int64_t d = 0; d < D; d++)
          for (int64_t t = c; t < e; t++) d0[d * WP + t] = s0[t * H * D + d];
      }
      for (int64_t d = 0; d < D; d++) std::fill(d0 + d * WP + W, d0 + (d + 1) * WP, 0.f);
    }
  });
  return kt;
}

void attend(const at::Tensor& q, const at::Tensor& kt, const at::Tensor& v, const at::Tensor& runs, int64_t run_len,
            double scale, int64_t q0, int64_t q1, at::Tensor out, at::Tensor lse) {
  check(q, "q", 4);
  check(v, "v", 4);
  check(runs, "runs", 2);
  check(out, "out", 4);
  check(lse, "lse", 3);
  const int64_t B = q.size(0), S = q.size(1), H = q.size(2), D = q.size(3), W = kt.size(4) - PAD, WP = kt.size(4);
  const int64_t R = runs.size(1), L = run_len;
  TORCH_CHECK(q.scalar_type() == at::kFloat && kt.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat &&
                  out.scalar_type() == at::kFloat && lse.scalar_type() == at::kFloat,
              "direct attention takes float32 tensors");
  TORCH_CHECK(runs.scalar_type() == at::kInt && runs.size(0) == S, "runs must be int32 [S, R], got ", runs.sizes());
  TORCH_CHECK(kt.dim() == 5 && kt.is_contiguous() && kt.size(0) == B && kt.size(1) == H && W >= 1 &&
                  kt.size(2) * W == S && kt.size(3) == D, "kt ", kt.sizes(), " does not match q ", q.sizes());
  TORCH_CHECK(v.sizes() == q.sizes() && out.sizes() == q.sizes() && lse.size(0) == B && lse.size(1) == S &&
                  lse.size(2) == H, "v, out, lse do not match q ", q.sizes());
  TORCH_CHECK(R >= 1 && L >= 1 && 0 <= q0 && q0 <= q1 && q1 <= S, "bad runs ", R, "x", L, " or query range [", q0,
              ", ", q1, ") of ", S);
  TORCH_CHECK(S / W * D * WP < INT32_MAX, "one head's transposed keys (", S / W * D * WP,
              " floats) exceed the kernel's int32 offsets");
  const bool paired = L == 8 && R % 2 == 0;  // two runs of 8 fill one 16-lane vector
  const int64_t LC = paired ? 8 : (L + 15) / 16 * 16;  // score slots per run
  const int64_t K = R * LC, HD = H * D, blocks = (q1 - q0 + QBLOCK - 1) / QBLOCK;
  const float sc = static_cast<float>(scale);
  const float *qp = q.data_ptr<float>(), *ktp = kt.data_ptr<float>(), *vp = v.data_ptr<float>();
  const int32_t* runp = runs.data_ptr<int32_t>();
  float *op = out.data_ptr<float>(), *lp = lse.data_ptr<float>();

  // every query's chunks of 16 score lanes as kt offsets within one head (the same for every batch item and head)
  const int64_t per_run = paired ? 1 : LC / 16, C = paired ? R / 2 : R * per_run;
  std::vector<Chunk> chunk_table(static_cast<size_t>((q1 - q0) * C));
  at::parallel_for(q0, q1, 4096, [&](int64_t begin, int64_t end) {  // a few cheap entries per query
    for (int64_t n = begin; n < end; n++) {
      const int32_t* run = runp + n * R;
      Chunk* out_chunk = chunk_table.data() + (n - q0) * C;
      for (int64_t c = 0; c < C; c++) {
        if (paired) {
          out_chunk[c] = {key_offset(run[2 * c], W, D, WP), key_offset(run[2 * c + 1], W, D, WP), 16};
        } else {
          const int64_t r = c / per_run, lane0 = (c % per_run) * 16;
          const int32_t start = key_offset(run[r], W, D, WP) + static_cast<int32_t>(lane0);
          out_chunk[c] = {start, start, static_cast<int32_t>(std::min<int64_t>(16, L - lane0))};
        }
      }
    }
  });

  // work items: (batch item, block of queries); heads inside, so that a block's q and out rows (all heads,
  // contiguous) stay in cache
  at::parallel_for(0, B * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> score(K), acc(D), qs(D);
    for (int64_t item = begin; item < end; item++) {
      const int64_t b = item / blocks;
      const int64_t n0 = q0 + (item % blocks) * QBLOCK, n1 = std::min(q1, n0 + QBLOCK);
      for (int64_t h = 0; h < H; h++) {
        const float* kth = ktp + (b * H + h) * S / W * D * WP;
        const float* vb = vp + b * S * HD + h * D;
        for (int64_t n = n0; n < n1; n++) {
          const int32_t* run = runp + n * R;
          const float* qv = qp + (b * S + n) * HD + h * D;
          for (int64_t i = 0; i < D; i++) qs[i] = qv[i] * sc;
          const Chunk* chunks = chunk_table.data() + (n - q0) * C;
          const v16 vmax = paired ? scores<true>(kth, chunks, C, qs.data(), D, WP, score.data())
                                  : scores<false>(kth, chunks, C, qs.data(), D, WP, score.data());
          const float m = hmax(vmax);
          v16 vsum = {};
          for (int64_t j = 0; j < K; j += 16) {
            const v16 e = exp_nonpos(load16(score.data() + j) - m);
            store16(score.data() + j, e);
            vsum += e;
          }
          const float sum = hsum(vsum);
          switch (D % 16 == 0 ? D / 16 : 0) {
            case 1: accumulate<1>(vb, HD, run, R, L, LC, score.data(), acc.data()); break;
            case 2: accumulate<2>(vb, HD, run, R, L, LC, score.data(), acc.data()); break;
            case 3: accumulate<3>(vb, HD, run, R, L, LC, score.data(), acc.data()); break;
            case 4: accumulate<4>(vb, HD, run, R, L, LC, score.data(), acc.data()); break;
            case 5: accumulate<5>(vb, HD, run, R, L, LC, score.data(), acc.data()); break;
            case 6: accumulate<6>(vb, HD, run, R, L, LC, score.data(), acc.data()); break;
            case 7: accumulate<7>(vb, HD, run, R, L, LC, score.data(), acc.data()); break;
            case 8: accumulate<8>(vb, HD, run, R, L, LC, score.data(), acc.data()); break;
            default: accumulate_any(vb, HD, D, run, R, L, LC, score.data(), acc.data());
          }
          const float inv = 1.f / sum;
          float* o = op + (b * S + n) * HD + h * D;
          for (int64_t i = 0; i < D; i++) o[i] = acc[i] * inv;
          lp[(b * S + n) * H + h] = m + std::log(sum);
        }
      }
    }
  });
}

}  // namespace

TORCH_LIBRARY(diffattn_direct, m) {
  m.def("transpose_keys(Tensor k, int row_len) -> Tensor");
  m.def("attend(Tensor q, Tensor kt, Tensor v, Tensor runs, int run_len, float scale, int q0, int q1, "
        "Tensor(a!) out, Tensor(b!) lse) -> ()");
}

TORCH_LIBRARY_IMPL(diffattn_direct, CPU, m) {
  m.impl("transpose_keys", &transpose_keys);
  m.impl("attend", &attend);
}
