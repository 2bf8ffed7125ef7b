// Fused elementwise work of a ConvNet block, avg_pool2x2(relu(instance_norm(z))), on the CPU.
//
// The convolutions stay with PyTorch (oneDNN); these kernels replace the chains of activation-sized
// PyTorch ops around them (podd_lib/models.py, `_ConvBlockFn` and `_ConvBlockGrad`), with the same
// maths. Layout: float32, channels-last memory (N, H, W, C), H and W even. One image per OpenMP
// iteration: an image's slab of H*W*C floats (512 KB at 32x32x128) stays in the L2 cache between
// the passes over it, so each activation is read from memory about once. Per-(image, channel) sums
// are accumulated in double.
//
// Notation (as in models.py): M = H*W, mu and r = mean and 1/sqrt(var + eps) of z per (n, c),
// gam, bet = the norm's weight and bias, s = gam*r, t = bet - mu*s, mask = (s*z + t > 0), and
// gy = mask * gp[h/2, w/2] / 4 (the gradient at the norm's output from the pooled gradient gp).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

// s = gam * r and t = bet - mu * s for image n.
inline void affine(const float* gam, const float* bet, const float* mu, const float* r, int64_t C,
                   float* s, float* t) {
  for (int64_t c = 0; c < C; ++c) {
    s[c] = gam[c] * r[c];
    t[c] = bet[c] - mu[c] * s[c];
  }
}

// gy at pixel (h, w) of image n, channel c: mask * gp / 4.
// Branch-free, so that the loops over channels vectorise.
inline float masked(float zv, float s, float t, float gpv) {
  return static_cast<float>(s * zv + t > 0.f) * (0.25f * gpv);
}

// Over one pixel's channels: S_g += gy and S_gz += gy * z (the sums of the norm's backward).
inline void add_gy_sums(const float* zr, const float* gr, const float* s, const float* t, int64_t C, double* S_g,
                        double* S_gz) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    const float g = masked(zr[c], s[c], t[c], gr[c]);
    S_g[c] += g;
    S_gz[c] += static_cast<double>(g) * zr[c];
  }
}

}  // namespace

extern "C" {

// p = avg_pool2x2(relu(s*z + t)); also writes mu and r (N*C each). Two-pass statistics (biased variance).
void podd_block_forward(const float* z, const float* gam, const float* bet, double eps, int64_t N, int64_t H,
                        int64_t W, int64_t C, float* p, float* mu_out, float* r_out) {
  const int64_t M = H * W, Wp = W / 2;
#pragma omp parallel
  {
    std::vector<double> acc(C);
    std::vector<float> s(C), t(C);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const float* zn = z + n * M * C;
      float* mu = mu_out + n * C;
      float* r = r_out + n * C;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t i = 0; i < M; ++i) {
        const float* row = zn + i * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) acc[c] += row[c];
      }
      for (int64_t c = 0; c < C; ++c) mu[c] = static_cast<float>(acc[c] / M);
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t i = 0; i < M; ++i) {
        const float* row = zn + i * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const double dz = static_cast<double>(row[c]) - mu[c];
          acc[c] += dz * dz;
        }
      }
      for (int64_t c = 0; c < C; ++c) r[c] = static_cast<float>(1.0 / std::sqrt(acc[c] / M + eps));
      affine(gam, bet, mu, r, C, s.data(), t.data());
      float* pn = p + n * (M / 4) * C;
      for (int64_t h = 0; h < H; h += 2) {
        for (int64_t w = 0; w < W; w += 2) {
          const float* a = zn + (h * W + w) * C;
          const float* b = a + C;
          const float* e = a + W * C;
          const float* f = e + C;
          float* out = pn + ((h / 2) * Wp + w / 2) * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            const float v = std::max(s[c] * a[c] + t[c], 0.f) + std::max(s[c] * b[c] + t[c], 0.f) +
                            std::max(s[c] * e[c] + t[c], 0.f) + std::max(s[c] * f[c] + t[c], 0.f);
            out[c] = 0.25f * v;
          }
        }
      }
    }
  }
}

// gz: the gradient at the norm's input z for the pooled gradient gp (plus `extra`, if not null):
//   gz = s*gy + kx*z + k0, kx = -gam r^2 m_gyx, k0 = -gam r mean(gy) - kx mu, m_gyx = mean(gy x_hat).
// Also writes, per (n, c), M*m_gyx and M*mean(gy) (their sums over n are the norm's weight and bias grads).
void podd_block_zgrad(const float* gp, const float* z, const float* gam, const float* bet, const float* mu_in,
                      const float* r_in, const float* extra, int64_t N, int64_t H, int64_t W, int64_t C, float* gz,
                      float* g_gam_nc, float* g_bet_nc) {
  const int64_t M = H * W, Wp = W / 2;
#pragma omp parallel
  {
    std::vector<double> s_g(C), s_gz(C);
    std::vector<float> s(C), t(C), kx(C), k0(C);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const float* zn = z + n * M * C;
      const float* gpn = gp + n * (M / 4) * C;
      const float* mu = mu_in + n * C;
      const float* r = r_in + n * C;
      affine(gam, bet, mu, r, C, s.data(), t.data());
      std::fill(s_g.begin(), s_g.end(), 0.0);
      std::fill(s_gz.begin(), s_gz.end(), 0.0);
      for (int64_t h = 0; h < H; ++h) {
        for (int64_t w = 0; w < W; ++w) {
          add_gy_sums(zn + (h * W + w) * C, gpn + ((h / 2) * Wp + w / 2) * C, s.data(), t.data(), C, s_g.data(),
                      s_gz.data());
        }
      }
      for (int64_t c = 0; c < C; ++c) {
        const double mg = s_g[c] / M;
        const double m_gyx = r[c] * (s_gz[c] / M - mu[c] * mg);
        const double k_x = -static_cast<double>(gam[c]) * r[c] * r[c] * m_gyx;
        kx[c] = static_cast<float>(k_x);
        k0[c] = static_cast<float>(-static_cast<double>(gam[c]) * r[c] * mg - k_x * mu[c]);
        g_gam_nc[n * C + c] = static_cast<float>(M * m_gyx);
        g_bet_nc[n * C + c] = static_cast<float>(s_g[c]);
      }
      float* gzn = gz + n * M * C;
      const float* en = extra ? extra + n * M * C : nullptr;
      for (int64_t h = 0; h < H; ++h) {
        for (int64_t w = 0; w < W; ++w) {
          const int64_t o = (h * W + w) * C;
          const float* zr = zn + o;
          const float* gr = gpn + ((h / 2) * Wp + w / 2) * C;
          float* out = gzn + o;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            const float g = masked(zr[c], s[c], t[c], gr[c]);
            out[c] = s[c] * g + kx[c] * zr[c] + k0[c];
          }
          if (en) {
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) out[c] += en[o + c];
          }
        }
      }
    }
  }
}

// The derivative of the block's elementwise backward (gp, z) -> (gz, g_gam, g_bet) for upstream gradients
// u of gz (null: zero), a of g_gam and b of g_bet (per channel; null: zero). With the means
// m_u, m_ux = mean(u x_hat), m_uy = mean(u gy), mean(gy), m_gyx (formulas of podd_lib.fast.block._norm_double_backward):
//   d_gy = (k0 - kx r mu) + kx r z + s u,          kx = a - s m_ux, k0 = b - s m_u
//   d_z  = (c0 - cx r mu) + cx r z + r al2 gy + r al1 u,  al1 = -s m_gyx, al2 = a - s m_ux,
//          cx = -r (al1 m_ux + al2 m_gyx) - g_r r^2 / M, c0 = -r (al1 m_u + al2 mean(gy)),
//          g_r = gam M (m_uy - mean(gy) m_u - m_gyx m_ux)
//   d_gp = avg_pool2x2(mask * d_gy),   d_gam (per n, c) = r M (m_uy - m_u mean(gy) - m_ux m_gyx).
// Writes gz too when gz is not null (the conv terms of the double backward need it).
void podd_block_double(const float* gp, const float* z, const float* gam, const float* bet, const float* mu_in,
                       const float* r_in, const float* u, const float* a, const float* b, int64_t N, int64_t H,
                       int64_t W, int64_t C, float* gz, float* d_gp, float* d_z, float* d_gam_nc) {
  const int64_t M = H * W, Wp = W / 2;
#pragma omp parallel
  {
    std::vector<double> S_g(C), S_gz(C), S_u(C), S_uz(C), S_ug(C);
    std::vector<float> s(C), t(C), gkx(C), gk0(C), ex(C), e0(C), fx(C), f0(C), fg(C), fu(C);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const float* zn = z + n * M * C;
      const float* un = u ? u + n * M * C : nullptr;
      const float* gpn = gp + n * (M / 4) * C;
      const float* mu = mu_in + n * C;
      const float* r = r_in + n * C;
      affine(gam, bet, mu, r, C, s.data(), t.data());
      for (auto* v : {&S_g, &S_gz, &S_u, &S_uz, &S_ug}) std::fill(v->begin(), v->end(), 0.0);
      for (int64_t h = 0; h < H; ++h) {
        for (int64_t w = 0; w < W; ++w) {
          const int64_t o = (h * W + w) * C;
          const float* zr = zn + o;
          const float* gr = gpn + ((h / 2) * Wp + w / 2) * C;
          add_gy_sums(zr, gr, s.data(), t.data(), C, S_g.data(), S_gz.data());
          if (un) {
            const float* ur = un + o;
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) {
              const float g = masked(zr[c], s[c], t[c], gr[c]);
              S_u[c] += ur[c];
              S_uz[c] += static_cast<double>(ur[c]) * zr[c];
              S_ug[c] += static_cast<double>(ur[c]) * g;
            }
          }
        }
      }
      for (int64_t c = 0; c < C; ++c) {
        const double rc = r[c], mc = mu[c], gc = gam[c], sc = gc * rc;
        const double ac = a ? a[c] : 0.0, bc = b ? b[c] : 0.0;
        const double m_g = S_g[c] / M, m_gyx = rc * (S_gz[c] / M - mc * m_g);
        const double m_u = S_u[c] / M, m_ux = rc * (S_uz[c] / M - mc * m_u), m_uy = S_ug[c] / M;
        // gz (as in podd_block_zgrad)
        const double g_kx = -gc * rc * rc * m_gyx;
        gkx[c] = static_cast<float>(g_kx);
        gk0[c] = static_cast<float>(-sc * m_g - g_kx * mc);
        // d_gy
        const double kx = ac - sc * m_ux, k0 = bc - sc * m_u;
        ex[c] = static_cast<float>(kx * rc);
        e0[c] = static_cast<float>(k0 - kx * rc * mc);
        // d_z
        const double g_r = gc * M * (m_uy - m_g * m_u - m_gyx * m_ux);
        const double al1 = -sc * m_gyx, al2 = ac - sc * m_ux;
        const double cx = -rc * (al1 * m_ux + al2 * m_gyx) - g_r * rc * rc / M;
        const double c0 = -rc * (al1 * m_u + al2 * m_g);
        fx[c] = static_cast<float>(cx * rc);
        f0[c] = static_cast<float>(c0 - cx * rc * mc);
        fg[c] = static_cast<float>(rc * al2);
        fu[c] = static_cast<float>(rc * al1);
        d_gam_nc[n * C + c] = static_cast<float>(rc * M * (m_uy - m_u * m_g - m_ux * m_gyx));
      }
      float* gzn = gz ? gz + n * M * C : nullptr;
      float* dzn = d_z + n * M * C;
      float* dpn = d_gp + n * (M / 4) * C;
      for (int64_t h = 0; h < H; h += 2) {
        for (int64_t w = 0; w < W; w += 2) {
          const float* gr = gpn + ((h / 2) * Wp + w / 2) * C;
          float* dp = dpn + ((h / 2) * Wp + w / 2) * C;
          std::fill(dp, dp + C, 0.f);
          for (int64_t k = 0; k < 4; ++k) {
            const int64_t o = ((h + k / 2) * W + w + k % 2) * C;
            const float* zr = zn + o;
            const float* ur = un ? un + o : nullptr;
            float* dz = dzn + o;
            if (ur) {
#pragma omp simd
              for (int64_t c = 0; c < C; ++c) {
                const bool on = s[c] * zr[c] + t[c] > 0.f;
                const float g = on ? 0.25f * gr[c] : 0.f;
                const float dgy = e0[c] + ex[c] * zr[c] + s[c] * ur[c];
                dz[c] = f0[c] + fx[c] * zr[c] + fg[c] * g + fu[c] * ur[c];
                dp[c] += on ? dgy : 0.f;
              }
            } else {
#pragma omp simd
              for (int64_t c = 0; c < C; ++c) {
                const bool on = s[c] * zr[c] + t[c] > 0.f;
                const float g = on ? 0.25f * gr[c] : 0.f;
                const float dgy = e0[c] + ex[c] * zr[c];
                dz[c] = f0[c] + fx[c] * zr[c] + fg[c] * g;
                dp[c] += on ? dgy : 0.f;
              }
            }
            if (gzn) {
              float* gzr = gzn + o;
#pragma omp simd
              for (int64_t c = 0; c < C; ++c) {
                const float g = masked(zr[c], s[c], t[c], gr[c]);
                gzr[c] = s[c] * g + gkx[c] * zr[c] + gk0[c];
              }
            }
          }
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) dp[c] *= 0.25f;
        }
      }
    }
  }
}

}  // extern "C"
