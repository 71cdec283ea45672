/* wip/phantom.h — API part: a synthetic abdominal CT phantom with FLARE22 organ labels.

   ioupos_phantom_make fills two volumes of the same grid: an int16-valued CT image in Hounsfield
   units (stored as float, as every ioupos_volume) and a label map with the FLARE22 ids
   (1 liver, 2 right kidney, 3 spleen, 4 pancreas, 5 aorta, 6 inferior vena cava, 7 right
   adrenal, 8 left adrenal, 9 gallbladder, 10 oesophagus, 11 stomach, 12 duodenum, 13 left
   kidney; 0 everything else). It is the data of `make demo` on a fresh machine and test data
   that needs no download.

   Geometry. The affine is diagonal RAS+ (NIfTI / nibabel world: +x towards the patient's
   Right, +y Anterior, +z Superior) with the spacing on the diagonal and the origin chosen so
   that world (0, 0, 0) is the centre of the volume. So voxel index i grows towards the
   patient's right (the liver is at high i), j towards the front (the spine is at low j) and k
   towards the head (the liver dome and lung bases are at high k).

   Anatomy: an adult upper abdomen of fixed physical size (body about 320 x 230 mm in plane;
   160 mm from the diaphragm domes down to below the kidneys) centred in the field of view. A
   field of view smaller than 384 x 320 mm in plane or 160 mm along z shrinks the anatomy to fit
   (in plane and along z separately), so every organ is always in view; a larger one only adds
   air around the body and more body above and below the organs.
     body: elliptical cross-section with a flatter back, varying slowly along z; skin,
           subcutaneous fat (-100 HU), abdominal wall muscle (50 HU), intra-abdominal fat
           (-90 HU), unlabelled bowel loops (25 HU with gas pockets) low and in front;
     bone: lumbar / lower thoracic vertebrae (cortical shell 600 HU, cancellous 200 HU,
           discs 80 HU, spinal canal 20 HU, arch, spinous and transverse processes), oblique
           ribs in the wall of the upper slices (450 HU); paraspinal and psoas muscles;
     thorax above the diaphragm domes (right dome higher): lung bases (-850 HU) behind and
           beside the heart (40 HU);
     organs: liver (60 HU, with darker portal / hepatic veins) in the right upper quadrant,
           gallbladder (10) under it, right kidney (cortex 45, medulla 30, sinus fat) lower than
           the left, spleen (50) at the left posterior wall, stomach (wall 40, fluid 15, air
           -950 in front) on the left, oesophagus (40, small air lumen) from above into the
           stomach, duodenum (C-loop, 30) around the pancreatic head, pancreas (45) from the
           C-loop across the aorta towards the spleen, aorta (contrast, 180) left-anterior of
           the spine, IVC (100) to its right, adrenals (30) above and medial to the kidneys.
   Each case varies with the seed: body size, aspect and fat thickness, every organ's
   position (several mm), size (about +-12 %), rotation and a smooth low-frequency deformation,
   the bowel pattern, the stomach's air level, tissue HU (a few HU) and the noise. The same seed
   gives bit-identical volumes.

   Gaussian noise of noise_sd HU (default 15) is added everywhere, then values are rounded to
   integers and clamped to the int16 CT range [-1024, 3071]. noise_sd 0 gives the noise-free
   phantom. Runtime: about 0.1-0.2 s for the default 192 x 160 x 64 grid on one core. */
#ifndef IOUPOS_WIP_PHANTOM_H
#define IOUPOS_WIP_PHANTOM_H
#include "ioupos.h"
#include "wip/nifti.h" /* ioupos_volume (dropped at merge: same header by then) */
#ifdef __cplusplus
extern "C" {
#endif

/* FLARE22 label ids. */
enum {
  IOUPOS_LABEL_LIVER = 1,
  IOUPOS_LABEL_KIDNEY_R = 2,
  IOUPOS_LABEL_SPLEEN = 3,
  IOUPOS_LABEL_PANCREAS = 4,
  IOUPOS_LABEL_AORTA = 5,
  IOUPOS_LABEL_IVC = 6,
  IOUPOS_LABEL_ADRENAL_R = 7,
  IOUPOS_LABEL_ADRENAL_L = 8,
  IOUPOS_LABEL_GALLBLADDER = 9,
  IOUPOS_LABEL_OESOPHAGUS = 10,
  IOUPOS_LABEL_STOMACH = 11,
  IOUPOS_LABEL_DUODENUM = 12,
  IOUPOS_LABEL_KIDNEY_L = 13,
  IOUPOS_LABEL_COUNT = 14 /* ids are 0 (background) .. 13 */
};

typedef struct ioupos_phantom_opts {
  uint64_t seed;     /* same seed, same volumes (bit for bit) */
  int nx, ny, nz;    /* grid, NIfTI order (x fastest); each 1..4096 */
  double spacing[3]; /* voxel size in mm along x, y, z; each in (0, 100] */
  double noise_sd;   /* Gaussian noise in HU, >= 0 (0: noise-free) */
} ioupos_phantom_opts;

/* seed 0, 192 x 160 x 64 voxels at 2 x 2 x 2.5 mm (384 x 320 x 160 mm), noise_sd 15 HU */
IOUPOS_DEF void ioupos_phantom_defaults(ioupos_phantom_opts *o);

/* Fill *image (HU, integer values) and *label (FLARE22 ids), both allocated here on the grid of
   *o with the same RAS+ affine; free them with ioupos_volume_free. On failure (bad options,
   out of memory) both are left empty (data NULL) and the reason names the bad value. */
IOUPOS_DEF int ioupos_phantom_make(const ioupos_phantom_opts *o, ioupos_volume *image,
                                   ioupos_volume *label);

/* "liver", "right kidney", ... for ids 1..13; "background" for 0; "?" otherwise. */
IOUPOS_DEF const char *ioupos_label_name(int id);

#ifdef __cplusplus
}
#endif
#endif /* IOUPOS_WIP_PHANTOM_H */

#if defined(IOUPOS_IMPLEMENTATION) && !defined(IOUPOS_WIP_PHANTOM_IMPL)
#define IOUPOS_WIP_PHANTOM_IMPL

/* Implementation notes.

   Everything is described in "nominal" millimetres: RAS world coordinates of a standard-size
   patient centred at the origin. A voxel's nominal point is its world point divided by the fit
   factor (field of view smaller than the reference) and by the case's body scale, so the
   per-axis tables px[i], py[j], pz[k] give it without any per-voxel arithmetic.

   Painting order (later wins): air; body layers (skin, fat, wall muscle, cavity fat); bowel in
   the cavity; organs in increasing priority, each only inside the cavity and (except the
   vessels and the oesophagus) below the diaphragm; unlabelled vessels inside the liver and the
   mesentery; thorax above the diaphragm; posterior muscles and bone last, which clear any label
   under them. A region map (0 outside the body, 1 body wall, 2 cavity) gates the organs.

   Organ shapes are unions of ellipsoids and tubes (Catmull-Rom-smoothed polylines with a
   radius per point). A shape is tested at the voxel's nominal point plus the organ's smooth
   displacement d, whose component c is a sum of two sinusoids of the other two coordinates;
   those are tabulated per axis, so the warp costs six table look-ups per voxel. */

#define IOUPOS__PH_MAXCP 8               /* control points per tube */
#define IOUPOS__PH_SUB 6                 /* smoothed points per control segment */
#define IOUPOS__PH_MAXPTS ((IOUPOS__PH_MAXCP - 1) * IOUPOS__PH_SUB + 1)
#define IOUPOS__PH_MAXSHAPES 3
#define IOUPOS__PH_PI 3.14159265358979323846
#define IOUPOS__PH_NWAVES 6               /* plane waves of the bowel field */
#define IOUPOS__PH_REF_X 384.0           /* reference field of view (mm) */
#define IOUPOS__PH_REF_Y 320.0
#define IOUPOS__PH_REF_Z 160.0

typedef struct ioupos__ph_shape {
  int tube;                            /* 0: ellipsoid, 1: tube */
  double c[3], r[3];                   /* ellipsoid centre and semi-axes */
  double m[3][3];                      /* ellipsoid: rows are the local axes (world -> local) */
  int n;                               /* tube: smoothed points */
  double p[IOUPOS__PH_MAXPTS][4];      /* tube: x, y, z, radius */
  double lo[3], hi[3];                 /* bounding box, nominal mm */
} ioupos__ph_shape;

typedef struct ioupos__ph_organ {
  int label, clip;                     /* clip: only below the diaphragm */
  int nshapes;
  ioupos__ph_shape s[IOUPOS__PH_MAXSHAPES];
  double hu;                           /* base HU of the case */
  double amp[3][2], w[3][2], ph[3][2]; /* warp: d_c = sum_t amp sin(w * x_other_t + ph) */
  double *wt[3][2];                    /* tabulated warp terms over the other axes' indices */
} ioupos__ph_organ;

/* the case: everything drawn from the seed */
typedef struct ioupos__ph_case {
  double body_a, body_b_ant, body_b_post; /* body semi-axes at z = 0 (nominal mm) */
  double body_wa, body_wb, body_pa, body_pb; /* slow z variation: relative amplitudes, phases */
  double fat_lat, fat_ant, fat_post, wall;   /* layer thicknesses (mm) */
  double dome_r, dome_l;                     /* diaphragm dome apex heights (nominal z) */
  double air_level;                          /* stomach: air above this y */
  double hu_fat, hu_muscle, hu_liver, hu_spleen, hu_kidney, hu_aorta, hu_ivc;
  double bowel_k[IOUPOS__PH_NWAVES][3];      /* bowel field: plane waves cos(k . x + ph) */
  double bowel_ph[IOUPOS__PH_NWAVES];
  double rib_phase;
} ioupos__ph_case;

static double ioupos__ph_u(ioupos_rng *rng, double a, double b) {
  return a + (b - a) * ioupos_rng_uniform(rng);
}

static double ioupos__ph_clamp(double v, double lo, double hi) {
  return v < lo ? lo : v > hi ? hi : v;
}

/* Rotation, local -> world: R = Rz(az) Ry(ay) Rx(ax); m gets its transpose (world -> local). */
static void ioupos__ph_rotation(double m[3][3], double az, double ay, double ax) {
  double cz = cos(az), sz = sin(az), cy = cos(ay), sy = sin(ay), cx = cos(ax), sx = sin(ax);
  double R[3][3];
  int i, j;
  R[0][0] = cz * cy; R[0][1] = cz * sy * sx - sz * cx; R[0][2] = cz * sy * cx + sz * sx;
  R[1][0] = sz * cy; R[1][1] = sz * sy * sx + cz * cx; R[1][2] = sz * sy * cx - cz * sx;
  R[2][0] = -sy;     R[2][1] = cy * sx;                R[2][2] = cy * cx;
  for (i = 0; i < 3; ++i)
    for (j = 0; j < 3; ++j) m[i][j] = R[j][i];
}

/* An ellipsoid: nominal centre c, semi-axes r, angles (rad) about z, y, x; jittered by the
   organ's draws (shift sh, scale sc) already applied by the caller. */
static void ioupos__ph_ellipsoid(ioupos__ph_organ *g, const double c[3], const double r[3],
                                 double az, double ay, double ax) {
  ioupos__ph_shape *s = &g->s[g->nshapes++];
  double rmax;
  int k;
  IOUPOS_ASSERT(g->nshapes <= IOUPOS__PH_MAXSHAPES);
  memset(s, 0, sizeof *s);
  s->tube = 0;
  rmax = r[0] > r[1] ? r[0] : r[1];
  rmax = rmax > r[2] ? rmax : r[2];
  for (k = 0; k < 3; ++k) {
    s->c[k] = c[k];
    s->r[k] = r[k];
    s->lo[k] = c[k] - rmax;
    s->hi[k] = c[k] + rmax;
  }
  ioupos__ph_rotation(s->m, az, ay, ax);
}

/* A tube through n control points cp[i] = {x, y, z, radius}, smoothed by Catmull-Rom. */
static void ioupos__ph_tube(ioupos__ph_organ *g, const double (*cp)[4], int n) {
  ioupos__ph_shape *s = &g->s[g->nshapes++];
  int i, j, k;
  IOUPOS_ASSERT(g->nshapes <= IOUPOS__PH_MAXSHAPES && n >= 2 && n <= IOUPOS__PH_MAXCP);
  memset(s, 0, sizeof *s);
  s->tube = 1;
  s->n = 0;
  for (i = 0; i + 1 < n; ++i) {
    const double *p0 = cp[i > 0 ? i - 1 : 0], *p1 = cp[i], *p2 = cp[i + 1];
    const double *p3 = cp[i + 2 < n ? i + 2 : n - 1];
    for (j = 0; j < IOUPOS__PH_SUB || (i + 2 == n && j == IOUPOS__PH_SUB); ++j) {
      double t = (double)j / IOUPOS__PH_SUB, t2 = t * t, t3 = t2 * t;
      for (k = 0; k < 4; ++k)
        s->p[s->n][k] = 0.5 * (2.0 * p1[k] + (-p0[k] + p2[k]) * t +
                               (2.0 * p0[k] - 5.0 * p1[k] + 4.0 * p2[k] - p3[k]) * t2 +
                               (-p0[k] + 3.0 * p1[k] - 3.0 * p2[k] + p3[k]) * t3);
      ++s->n;
    }
  }
  for (k = 0; k < 3; ++k) {
    s->lo[k] = 1e30;
    s->hi[k] = -1e30;
  }
  for (i = 0; i < s->n; ++i)
    for (k = 0; k < 3; ++k) {
      if (s->p[i][k] - s->p[i][3] < s->lo[k]) s->lo[k] = s->p[i][k] - s->p[i][3];
      if (s->p[i][k] + s->p[i][3] > s->hi[k]) s->hi[k] = s->p[i][k] + s->p[i][3];
    }
}

/* Normalised distance of point x to a shape (< 1 inside); *rad gets the local radius (tube:
   the radius at the nearest centre-line point; ellipsoid: the smallest semi-axis). */
static double ioupos__ph_eval(const ioupos__ph_shape *s, const double x[3], double *rad) {
  int i, k;
  if (!s->tube) {
    double q = 0.0;
    for (i = 0; i < 3; ++i) {
      double u = 0.0;
      for (k = 0; k < 3; ++k) u += s->m[i][k] * (x[k] - s->c[k]);
      u /= s->r[i];
      q += u * u;
    }
    *rad = s->r[0] < s->r[1] ? (s->r[0] < s->r[2] ? s->r[0] : s->r[2])
                             : (s->r[1] < s->r[2] ? s->r[1] : s->r[2]);
    return sqrt(q);
  } else {
    double best = 1e30, brad = 1.0;
    for (i = 0; i + 1 < s->n; ++i) {
      const double *a = s->p[i], *b = s->p[i + 1];
      double ab[3], ax[3], l2 = 0.0, t = 0.0, d2 = 0.0, r, q;
      for (k = 0; k < 3; ++k) {
        ab[k] = b[k] - a[k];
        ax[k] = x[k] - a[k];
        l2 += ab[k] * ab[k];
        t += ab[k] * ax[k];
      }
      t = l2 > 0.0 ? ioupos__ph_clamp(t / l2, 0.0, 1.0) : 0.0;
      for (k = 0; k < 3; ++k) {
        double e = ax[k] - t * ab[k];
        d2 += e * e;
      }
      r = a[3] + t * (b[3] - a[3]);
      q = d2 / (r * r);
      if (q < best) best = q, brad = r;
    }
    *rad = brad;
    return sqrt(best);
  }
}

/* Diaphragm height (nominal z) over the nominal point (x, y): two domes, the right higher,
   falling fastest towards the back, never below the posterior recesses. */
static double ioupos__ph_diaphragm(const ioupos__ph_case *cs, double x, double y) {
  double dy = y + 5.0, ky = dy < 0 ? 1.0 / (60.0 * 60.0) : 1.0 / (120.0 * 120.0);
  double zr = cs->dome_r - 32.0 * ((x - 62.0) * (x - 62.0) / (75.0 * 75.0) + dy * dy * ky);
  double zl = cs->dome_l - 32.0 * ((x + 62.0) * (x + 62.0) / (70.0 * 70.0) + dy * dy * ky);
  double z = zr > zl ? zr : zl, zc = cs->dome_l - 14.0;
  if (z < zc && y > -40.0) z = zc; /* central tendon under the heart */
  return z < 22.0 ? 22.0 : z;
}

/* Body outline test at nominal (x, y) for semi-axes a, b_ant, b_post: < 1 inside. The back is
   squarer than the front. */
static double ioupos__ph_outline(double x, double y, double a, double bant, double bpost) {
  double u = x / a, v = y / (y >= 0 ? bant : bpost), u2 = u * u, v2 = v * v;
  return y >= 0 ? u2 + v2 : u2 + v2 - 0.55 * u2 * v2;
}

static void ioupos__ph_draw_case(ioupos_rng *rng, ioupos__ph_case *cs) {
  int t, k;
  cs->body_a = ioupos__ph_u(rng, 150.0, 168.0);
  cs->body_b_ant = ioupos__ph_u(rng, 108.0, 124.0);
  cs->body_b_post = ioupos__ph_u(rng, 108.0, 114.0);
  cs->body_wa = ioupos__ph_u(rng, 0.02, 0.05);
  cs->body_wb = ioupos__ph_u(rng, 0.02, 0.05);
  cs->body_pa = ioupos__ph_u(rng, 0.0, 2.0 * IOUPOS__PH_PI);
  cs->body_pb = ioupos__ph_u(rng, 0.0, 2.0 * IOUPOS__PH_PI);
  cs->fat_lat = ioupos__ph_u(rng, 8.0, 26.0);
  cs->fat_ant = cs->fat_lat * ioupos__ph_u(rng, 0.9, 1.4);
  cs->fat_post = cs->fat_lat * ioupos__ph_u(rng, 0.4, 0.7);
  cs->wall = ioupos__ph_u(rng, 9.0, 13.0);
  cs->dome_r = ioupos__ph_u(rng, 78.0, 88.0);
  cs->dome_l = cs->dome_r - ioupos__ph_u(rng, 6.0, 14.0);
  cs->air_level = ioupos__ph_u(rng, 20.0, 45.0);
  cs->hu_fat = ioupos__ph_u(rng, -105.0, -85.0);
  cs->hu_muscle = ioupos__ph_u(rng, 45.0, 58.0);
  cs->hu_liver = ioupos__ph_u(rng, 55.0, 66.0);
  cs->hu_spleen = ioupos__ph_u(rng, 45.0, 54.0);
  cs->hu_kidney = ioupos__ph_u(rng, 38.0, 50.0);
  cs->hu_aorta = ioupos__ph_u(rng, 160.0, 220.0);
  cs->hu_ivc = ioupos__ph_u(rng, 80.0, 120.0);
  for (t = 0; t < IOUPOS__PH_NWAVES; ++t) { /* random direction, wavelength 40..75 mm */
    double d[3], len = 0.0, w = 2.0 * IOUPOS__PH_PI / ioupos__ph_u(rng, 40.0, 75.0);
    do {
      len = 0.0;
      for (k = 0; k < 3; ++k) {
        d[k] = ioupos__ph_u(rng, -1.0, 1.0);
        len += d[k] * d[k];
      }
    } while (len > 1.0 || len < 0.05);
    for (k = 0; k < 3; ++k) cs->bowel_k[t][k] = w * d[k] / sqrt(len);
    cs->bowel_ph[t] = ioupos__ph_u(rng, 0.0, 2.0 * IOUPOS__PH_PI);
  }
  cs->rib_phase = ioupos__ph_u(rng, 0.0, 1.0);
}

/* Organ construction: nominal geometry with the case's jitter. */
typedef struct ioupos__ph_jit {
  double sh[3], sc; /* shift (mm) and scale of the whole organ about its anchor */
  double anchor[3];
  double rot;       /* extra rotation about z (rad) */
} ioupos__ph_jit;

static void ioupos__ph_jitter(ioupos_rng *rng, ioupos__ph_jit *j, const double anchor[3],
                              double shift_mm, double scale) {
  int k;
  for (k = 0; k < 3; ++k) {
    j->sh[k] = ioupos__ph_u(rng, -shift_mm, shift_mm);
    j->anchor[k] = anchor[k];
  }
  j->sc = ioupos__ph_u(rng, 1.0 - scale, 1.0 + scale);
  j->rot = ioupos__ph_u(rng, -0.12, 0.12);
}

/* Apply jitter to a nominal point (rotation about the anchor's z axis, scale, shift). */
static void ioupos__ph_jpoint(const ioupos__ph_jit *j, const double in[3], double out[3]) {
  double dx = in[0] - j->anchor[0], dy = in[1] - j->anchor[1], dz = in[2] - j->anchor[2];
  double c = cos(j->rot), s = sin(j->rot);
  out[0] = j->anchor[0] + j->sc * (c * dx - s * dy) + j->sh[0];
  out[1] = j->anchor[1] + j->sc * (s * dx + c * dy) + j->sh[1];
  out[2] = j->anchor[2] + j->sc * dz + j->sh[2];
}

static void ioupos__ph_add_ell(ioupos__ph_organ *g, const ioupos__ph_jit *j, double cx,
                               double cy, double cz, double rx, double ry, double rz, double az,
                               double ay, double ax) {
  double c0[3], c[3], r[3];
  c0[0] = cx, c0[1] = cy, c0[2] = cz;
  ioupos__ph_jpoint(j, c0, c);
  r[0] = rx * j->sc, r[1] = ry * j->sc, r[2] = rz * j->sc;
  ioupos__ph_ellipsoid(g, c, r, az + j->rot, ay, ax);
}

static void ioupos__ph_add_tube(ioupos__ph_organ *g, const ioupos__ph_jit *j, ioupos_rng *rng,
                                const double (*cp)[4], int n, double wobble) {
  double q[IOUPOS__PH_MAXCP][4];
  int i, k;
  for (i = 0; i < n; ++i) {
    ioupos__ph_jpoint(j, cp[i], q[i]);
    for (k = 0; k < 3; ++k) q[i][k] += ioupos__ph_u(rng, -wobble, wobble);
    q[i][3] = cp[i][3] * j->sc * ioupos__ph_u(rng, 0.92, 1.08);
  }
  ioupos__ph_tube(g, (const double (*)[4])q, n);
}

static void ioupos__ph_warp(ioupos_rng *rng, ioupos__ph_organ *g, double amp_mm) {
  int c, t;
  for (c = 0; c < 3; ++c)
    for (t = 0; t < 2; ++t) {
      g->amp[c][t] = ioupos__ph_u(rng, 0.3, 1.0) * amp_mm;
      g->w[c][t] = 2.0 * IOUPOS__PH_PI / ioupos__ph_u(rng, 60.0, 150.0);
      g->ph[c][t] = ioupos__ph_u(rng, 0.0, 2.0 * IOUPOS__PH_PI);
    }
}

enum { IOUPOS__PH_NORGANS = 16, IOUPOS__PH_PORTAL = 100, IOUPOS__PH_HEPATIC, IOUPOS__PH_SMV };

/* Build the organs of a case in painting order (later wins). Returns the count. */
static int ioupos__ph_build(ioupos_rng *rng, const ioupos__ph_case *cs, ioupos__ph_organ *org) {
  ioupos__ph_jit j;
  ioupos__ph_organ *g;
  int n = 0;
  double a[3];
#define IOUPOS__PH_NEW(lab, clp, hu_, warp_mm)                                                  \
  (g = &org[n++], memset(g, 0, sizeof *g), g->label = (lab), g->clip = (clp), g->hu = (hu_),    \
   ioupos__ph_warp(rng, g, (warp_mm)))
#define IOUPOS__PH_ANCHOR(x, y, z) (a[0] = (x), a[1] = (y), a[2] = (z))

  /* liver: right lobe against the right wall up into the dome, left lobe across the midline */
  IOUPOS__PH_NEW(IOUPOS_LABEL_LIVER, 1, cs->hu_liver, 5.0);
  IOUPOS__PH_ANCHOR(60.0, 0.0, 25.0);
  ioupos__ph_jitter(rng, &j, a, 6.0, 0.08);
  ioupos__ph_add_ell(g, &j, 70.0, -8.0, 22.0, 74.0, 86.0, 62.0, 0.15, -0.10, 0.0);
  ioupos__ph_add_ell(g, &j, -10.0, 42.0, 45.0, 55.0, 34.0, 30.0, -0.35, 0.15, 0.0);
  ioupos__ph_add_ell(g, &j, 25.0, 5.0, 40.0, 35.0, 45.0, 38.0, 0.0, 0.0, 0.0);

  /* stomach: fundus under the left dome, body forward and down, antrum across to the pylorus */
  IOUPOS__PH_NEW(IOUPOS_LABEL_STOMACH, 1, 40.0, 4.0);
  IOUPOS__PH_ANCHOR(-45.0, 20.0, 30.0);
  ioupos__ph_jitter(rng, &j, a, 6.0, 0.1);
  {
    static const double cp[6][4] = {{-55.0, -18.0, 62.0, 30.0}, {-62.0, 8.0, 42.0, 32.0},
                                    {-58.0, 35.0, 15.0, 28.0},  {-35.0, 55.0, -2.0, 22.0},
                                    {-5.0, 55.0, -8.0, 17.0},   {15.0, 45.0, -8.0, 10.0}};
    ioupos__ph_add_tube(g, &j, rng, cp, 6, 3.0);
  }

  /* spleen: along the left posterolateral wall */
  IOUPOS__PH_NEW(IOUPOS_LABEL_SPLEEN, 1, cs->hu_spleen, 4.0);
  IOUPOS__PH_ANCHOR(-95.0, -40.0, 35.0);
  ioupos__ph_jitter(rng, &j, a, 6.0, 0.12);
  ioupos__ph_add_ell(g, &j, -95.0, -40.0, 35.0, 24.0, 55.0, 45.0, -0.75, 0.0, 0.15);

  /* duodenum: bulb from the pylorus, descending part, horizontal part behind the SMA/SMV,
     ascending part to the duodenojejunal flexure */
  IOUPOS__PH_NEW(IOUPOS_LABEL_DUODENUM, 1, 30.0, 3.0);
  IOUPOS__PH_ANCHOR(35.0, 10.0, -35.0);
  ioupos__ph_jitter(rng, &j, a, 5.0, 0.1);
  {
    static const double cp[7][4] = {{18.0, 42.0, -8.0, 11.0},  {42.0, 28.0, -14.0, 12.0},
                                    {55.0, 8.0, -30.0, 12.0},  {52.0, 2.0, -52.0, 11.0},
                                    {30.0, -2.0, -64.0, 10.0}, {-5.0, 5.0, -66.0, 10.0},
                                    {-28.0, 12.0, -50.0, 10.0}};
    ioupos__ph_add_tube(g, &j, rng, cp, 7, 2.5);
  }

  /* pancreas: head in the C-loop, neck in front of the SMV, body over the aorta, tail to the
     splenic hilum */
  IOUPOS__PH_NEW(IOUPOS_LABEL_PANCREAS, 1, 45.0, 3.0);
  IOUPOS__PH_ANCHOR(0.0, 5.0, -10.0);
  ioupos__ph_jitter(rng, &j, a, 5.0, 0.1);
  {
    static const double cp[6][4] = {{32.0, 6.0, -38.0, 13.0}, {30.0, 10.0, -22.0, 15.0},
                                    {8.0, 16.0, -12.0, 10.0}, {-22.0, 12.0, -4.0, 10.0},
                                    {-50.0, 0.0, 6.0, 9.0},   {-72.0, -12.0, 16.0, 8.0}};
    ioupos__ph_add_tube(g, &j, rng, cp, 6, 2.0);
  }

  /* gallbladder: under the liver, fundus forward and down */
  IOUPOS__PH_NEW(IOUPOS_LABEL_GALLBLADDER, 1, 10.0, 2.0);
  IOUPOS__PH_ANCHOR(45.0, 42.0, -15.0);
  ioupos__ph_jitter(rng, &j, a, 5.0, 0.15);
  ioupos__ph_add_ell(g, &j, 45.0, 42.0, -15.0, 15.0, 17.0, 32.0, 0.3, 0.0, -0.45);

  /* kidneys: the right lower than the left; upper poles medial and back, hilum forward-medial */
  IOUPOS__PH_NEW(IOUPOS_LABEL_KIDNEY_R, 1, cs->hu_kidney, 3.0);
  IOUPOS__PH_ANCHOR(70.0, -42.0, -22.0);
  ioupos__ph_jitter(rng, &j, a, 5.0, 0.1);
  ioupos__ph_add_ell(g, &j, 70.0, -42.0, -22.0, 26.0, 22.0, 52.0, 0.45, -0.22, -0.15);
  IOUPOS__PH_NEW(IOUPOS_LABEL_KIDNEY_L, 1, cs->hu_kidney, 3.0);
  IOUPOS__PH_ANCHOR(-70.0, -42.0, -8.0);
  ioupos__ph_jitter(rng, &j, a, 5.0, 0.1);
  ioupos__ph_add_ell(g, &j, -70.0, -42.0, -8.0, 26.0, 22.0, 52.0, -0.45, 0.22, -0.15);

  /* adrenals: thin plates above and medial to the kidneys; the right behind the IVC */
  IOUPOS__PH_NEW(IOUPOS_LABEL_ADRENAL_R, 1, 30.0, 1.5);
  IOUPOS__PH_ANCHOR(40.0, -32.0, 32.0);
  ioupos__ph_jitter(rng, &j, a, 3.0, 0.1);
  ioupos__ph_add_ell(g, &j, 40.0, -32.0, 32.0, 4.5, 15.0, 16.0, -0.5, 0.0, 0.2);
  IOUPOS__PH_NEW(IOUPOS_LABEL_ADRENAL_L, 1, 30.0, 1.5);
  IOUPOS__PH_ANCHOR(-40.0, -30.0, 22.0);
  ioupos__ph_jitter(rng, &j, a, 3.0, 0.1);
  ioupos__ph_add_ell(g, &j, -40.0, -30.0, 22.0, 4.5, 15.0, 16.0, 0.5, 0.0, 0.2);

  /* oesophagus: down in front of the aorta, curving left into the cardia */
  IOUPOS__PH_NEW(IOUPOS_LABEL_OESOPHAGUS, 0, 40.0, 1.0);
  IOUPOS__PH_ANCHOR(-15.0, -10.0, 70.0);
  ioupos__ph_jitter(rng, &j, a, 3.0, 0.05);
  {
    static const double cp[4][4] = {{-4.0, -16.0, 95.0, 8.0}, {-8.0, -12.0, 75.0, 8.0},
                                    {-22.0, -6.0, 60.0, 9.0}, {-42.0, -4.0, 50.0, 10.0}};
    ioupos__ph_add_tube(g, &j, rng, cp, 4, 1.5);
  }

  /* IVC: right of the aorta, into the back of the liver, up to the right atrium */
  IOUPOS__PH_NEW(IOUPOS_LABEL_IVC, 0, cs->hu_ivc, 1.5);
  IOUPOS__PH_ANCHOR(22.0, -14.0, 0.0);
  ioupos__ph_jitter(rng, &j, a, 3.0, 0.08);
  {
    static const double cp[5][4] = {{24.0, -22.0, -95.0, 10.0}, {23.0, -18.0, -30.0, 11.0},
                                    {24.0, -12.0, 30.0, 12.0},  {18.0, -8.0, 70.0, 13.0},
                                    {12.0, 0.0, 100.0, 14.0}};
    ioupos__ph_add_tube(g, &j, rng, cp, 5, 1.5);
  }

  /* aorta: left-anterior of the vertebral bodies, behind the crura at the top */
  IOUPOS__PH_NEW(IOUPOS_LABEL_AORTA, 0, cs->hu_aorta, 1.0);
  IOUPOS__PH_ANCHOR(-12.0, -20.0, 0.0);
  ioupos__ph_jitter(rng, &j, a, 2.5, 0.08);
  {
    static const double cp[5][4] = {{-6.0, -28.0, 100.0, 12.0}, {-10.0, -24.0, 40.0, 12.0},
                                    {-13.0, -20.0, -10.0, 11.0}, {-14.0, -18.0, -60.0, 10.5},
                                    {-12.0, -18.0, -100.0, 10.0}};
    ioupos__ph_add_tube(g, &j, rng, cp, 5, 1.5);
  }

  /* unlabelled vessels, painted over background and liver only: portal vein into the liver,
     hepatic veins to the IVC, superior mesenteric vein */
  IOUPOS__PH_NEW(IOUPOS__PH_PORTAL, 1, cs->hu_ivc - 5.0, 2.0);
  IOUPOS__PH_ANCHOR(25.0, 8.0, 5.0);
  ioupos__ph_jitter(rng, &j, a, 3.0, 0.05);
  {
    static const double pv[4][4] = {{8.0, 10.0, -15.0, 7.0}, {25.0, 8.0, 2.0, 7.0},
                                    {50.0, 10.0, 18.0, 6.0}, {95.0, 0.0, 28.0, 3.5}};
    static const double lp[3][4] = {{45.0, 10.0, 16.0, 5.0}, {15.0, 35.0, 30.0, 4.0},
                                    {-20.0, 45.0, 42.0, 2.5}};
    ioupos__ph_add_tube(g, &j, rng, pv, 4, 2.0);
    ioupos__ph_add_tube(g, &j, rng, lp, 3, 2.0);
  }
  IOUPOS__PH_NEW(IOUPOS__PH_HEPATIC, 1, cs->hu_ivc - 10.0, 2.0);
  IOUPOS__PH_ANCHOR(30.0, 0.0, 55.0);
  ioupos__ph_jitter(rng, &j, a, 3.0, 0.05);
  {
    static const double rhv[3][4] = {{105.0, -10.0, 25.0, 2.5}, {70.0, -12.0, 50.0, 4.5},
                                      {28.0, -12.0, 68.0, 6.0}};
    static const double mhv[3][4] = {{60.0, 35.0, 20.0, 2.5}, {40.0, 12.0, 50.0, 4.5},
                                      {22.0, -8.0, 68.0, 6.0}};
    ioupos__ph_add_tube(g, &j, rng, rhv, 3, 2.0);
    ioupos__ph_add_tube(g, &j, rng, mhv, 3, 2.0);
  }
  IOUPOS__PH_NEW(IOUPOS__PH_SMV, 1, cs->hu_ivc - 5.0, 2.0);
  IOUPOS__PH_ANCHOR(5.0, 20.0, -50.0);
  ioupos__ph_jitter(rng, &j, a, 3.0, 0.05);
  {
    static const double smv[3][4] = {{8.0, 10.0, -15.0, 6.0}, {10.0, 22.0, -50.0, 5.0},
                                     {14.0, 30.0, -100.0, 4.5}};
    static const double sma[3][4] = {{-10.0, -8.0, -8.0, 3.5}, {-6.0, 20.0, -45.0, 3.5},
                                     {-4.0, 28.0, -100.0, 3.0}};
    ioupos__ph_add_tube(g, &j, rng, smv, 3, 2.0);
    ioupos__ph_add_tube(g, &j, rng, sma, 3, 2.0); /* shaded as aorta, see below */
  }
#undef IOUPOS__PH_NEW
#undef IOUPOS__PH_ANCHOR
  IOUPOS_ASSERT(n <= IOUPOS__PH_NORGANS);
  return n;
}

typedef struct ioupos__ph_grid {
  int nx, ny, nz;
  double *px, *py, *pz; /* nominal coordinate of each index along x, y, z */
} ioupos__ph_grid;

/* index range [*lo, *hi) along an axis whose nominal coordinates p[0..n-1] increase */
static void ioupos__ph_range(const double *p, int n, double a, double b, int *lo, int *hi) {
  int i = 0, k;
  while (i < n && p[i] < a) ++i;
  k = i;
  while (k < n && p[k] <= b) ++k;
  *lo = i;
  *hi = k;
}

/* HU of an organ voxel given the organ, the shape index it fell in, its normalised distance q,
   the local radius and the nominal point. */
static double ioupos__ph_shade(const ioupos__ph_organ *g, const ioupos__ph_case *cs, int shape,
                               double q, double rad, const double x[3]) {
  switch (g->label) {
    case IOUPOS_LABEL_KIDNEY_R:
    case IOUPOS_LABEL_KIDNEY_L: {
      /* sinus fat and pelvis towards the hilum (medial, forward), medulla, cortex */
      const ioupos__ph_shape *s = &g->s[0];
      double u[3], h;
      int i, k;
      for (i = 0; i < 3; ++i) {
        u[i] = 0.0;
        for (k = 0; k < 3; ++k) u[i] += s->m[i][k] * (x[k] - s->c[k]);
        u[i] /= s->r[i];
      }
      /* the hilum is on the local -x side for the right kidney, +x for the left (medial) */
      h = g->label == IOUPOS_LABEL_KIDNEY_R ? -u[0] : u[0];
      if (h > 0.05 && (h - 0.75) * (h - 0.75) / 0.35 + u[1] * u[1] / 0.12 + u[2] * u[2] / 0.30 < 1.0)
        return h > 0.45 ? -60.0 : 5.0;
      return q > 0.78 ? g->hu : g->hu - 15.0;
    }
    case IOUPOS_LABEL_STOMACH:
      if (q * rad < rad - 4.0) return x[1] > cs->air_level ? -950.0 : 15.0;
      return g->hu;
    case IOUPOS_LABEL_OESOPHAGUS:
      return q < 0.25 ? -900.0 : g->hu;
    case IOUPOS_LABEL_DUODENUM:
      return q < 0.55 ? 15.0 : g->hu;
    case IOUPOS__PH_SMV:
      return shape == 1 ? cs->hu_aorta : g->hu;
    default:
      return g->hu;
  }
}

static void ioupos__ph_tabulate(ioupos__ph_organ *g, const ioupos__ph_grid *gr, double *buf) {
  /* component c takes terms over the other two axes, in order: c=0: y, z; c=1: x, z; c=2: x, y */
  static const int other[3][2] = {{1, 2}, {0, 2}, {0, 1}};
  const double *pa[3];
  int na[3], c, t, i;
  pa[0] = gr->px, pa[1] = gr->py, pa[2] = gr->pz;
  na[0] = gr->nx, na[1] = gr->ny, na[2] = gr->nz;
  for (c = 0; c < 3; ++c)
    for (t = 0; t < 2; ++t) {
      int ax = other[c][t];
      g->wt[c][t] = buf;
      for (i = 0; i < na[ax]; ++i) buf[i] = g->amp[c][t] * sin(g->w[c][t] * pa[ax][i] + g->ph[c][t]);
      buf += na[ax];
    }
}

static void ioupos__ph_paint(const ioupos__ph_organ *g, const ioupos__ph_case *cs,
                             const ioupos__ph_grid *gr, const uint8_t *region, uint8_t *lab,
                             float *hu) {
  double lo[3] = {1e30, 1e30, 1e30}, hi[3] = {-1e30, -1e30, -1e30}, margin = 0.0;
  int i0, i1, j0, j1, k0, k1, i, j, k, s, c;
  int vessel = g->label >= IOUPOS__PH_PORTAL;
  for (c = 0; c < 3; ++c) margin += g->amp[c][0] + g->amp[c][1];
  for (s = 0; s < g->nshapes; ++s)
    for (c = 0; c < 3; ++c) {
      if (g->s[s].lo[c] < lo[c]) lo[c] = g->s[s].lo[c];
      if (g->s[s].hi[c] > hi[c]) hi[c] = g->s[s].hi[c];
    }
  ioupos__ph_range(gr->px, gr->nx, lo[0] - margin, hi[0] + margin, &i0, &i1);
  ioupos__ph_range(gr->py, gr->ny, lo[1] - margin, hi[1] + margin, &j0, &j1);
  ioupos__ph_range(gr->pz, gr->nz, lo[2] - margin, hi[2] + margin, &k0, &k1);
  for (k = k0; k < k1; ++k)
    for (j = j0; j < j1; ++j)
      for (i = i0; i < i1; ++i) {
        size_t v = ((size_t)k * gr->ny + j) * gr->nx + i;
        double x[3], q = 1e30, rad = 1.0;
        int hit = -1;
        if (region[v] != 2) continue;
        if (vessel && lab[v] != 0 && lab[v] != IOUPOS_LABEL_LIVER) continue;
        if (g->clip && gr->pz[k] > ioupos__ph_diaphragm(cs, gr->px[i], gr->py[j]) - 5.0) continue;
        x[0] = gr->px[i] + g->wt[0][0][j] + g->wt[0][1][k];
        x[1] = gr->py[j] + g->wt[1][0][i] + g->wt[1][1][k];
        x[2] = gr->pz[k] + g->wt[2][0][i] + g->wt[2][1][j];
        for (s = 0; s < g->nshapes; ++s) {
          double r, d = ioupos__ph_eval(&g->s[s], x, &r);
          if (d < q) q = d, rad = r, hit = s;
        }
        if (q >= 1.0) continue;
        hu[v] = (float)ioupos__ph_shade(g, cs, hit, q, rad, x);
        if (!vessel) lab[v] = (uint8_t)g->label;
      }
}

IOUPOS_DEF void ioupos_phantom_defaults(ioupos_phantom_opts *o) {
  if (!o) return;
  memset(o, 0, sizeof *o);
  o->seed = 0;
  o->nx = 192;
  o->ny = 160;
  o->nz = 64;
  o->spacing[0] = 2.0;
  o->spacing[1] = 2.0;
  o->spacing[2] = 2.5;
  o->noise_sd = 15.0;
}

IOUPOS_DEF const char *ioupos_label_name(int id) {
  static const char *const names[IOUPOS_LABEL_COUNT] = {
      "background", "liver",          "right kidney", "spleen",     "pancreas",
      "aorta",      "inferior vena cava", "right adrenal", "left adrenal", "gallbladder",
      "oesophagus", "stomach",        "duodenum",     "left kidney"};
  return id >= 0 && id < IOUPOS_LABEL_COUNT ? names[id] : "?";
}

IOUPOS_DEF int ioupos_phantom_make(const ioupos_phantom_opts *o, ioupos_volume *image,
                                   ioupos_volume *label) {
  ioupos__ph_case cs;
  ioupos__ph_organ *org = NULL;
  ioupos__ph_grid gr;
  ioupos_rng root, rng;
  uint8_t *region = NULL, *lab = NULL;
  float *hu = NULL, *lf = NULL;
  double *axes = NULL, *warp = NULL, *wave = NULL, fit_xy, fit_z, scale[3];
  size_t nvox, v;
  int norg, i, j, k, c, nsum;
  const int maxdim = 4096;

  if (image) memset(image, 0, sizeof *image);
  if (label) memset(label, 0, sizeof *label);
  if (!o || !image || !label)
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_phantom_make: NULL argument");
  if (o->nx < 1 || o->ny < 1 || o->nz < 1 || o->nx > maxdim || o->ny > maxdim || o->nz > maxdim)
    return ioupos__fail(IOUPOS_EINVAL, "phantom: size %dx%dx%d: each dimension must be in 1..%d",
                        o->nx, o->ny, o->nz, maxdim);
  for (c = 0; c < 3; ++c)
    if (!(o->spacing[c] > 0.0 && o->spacing[c] <= 100.0))
      return ioupos__fail(IOUPOS_EINVAL,
                          "phantom: spacing %g,%g,%g mm: each must be in (0, 100]",
                          o->spacing[0], o->spacing[1], o->spacing[2]);
  if (!(o->noise_sd >= 0.0 && o->noise_sd <= 1000.0))
    return ioupos__fail(IOUPOS_EINVAL, "phantom: noise sd %g HU must be in [0, 1000]",
                        o->noise_sd);

  nvox = (size_t)o->nx * (size_t)o->ny * (size_t)o->nz;
  nsum = o->nx + o->ny + o->nz;
  region = (uint8_t *)ioupos__calloc(nvox, 1);
  lab = (uint8_t *)ioupos__calloc(nvox, 1);
  hu = (float *)ioupos__calloc(nvox, sizeof(float));
  lf = (float *)ioupos__calloc(nvox, sizeof(float));
  axes = (double *)ioupos__calloc((size_t)nsum, sizeof(double));
  org = (ioupos__ph_organ *)ioupos__calloc(IOUPOS__PH_NORGANS, sizeof *org);
  warp = (double *)ioupos__calloc((size_t)IOUPOS__PH_NORGANS * 2 * (size_t)nsum, sizeof(double));
  wave = (double *)ioupos__calloc((size_t)IOUPOS__PH_NWAVES * 2 * (size_t)o->nx, sizeof(double));
  if (!region || !lab || !hu || !lf || !axes || !org || !warp || !wave) {
    IOUPOS_FREE(region); IOUPOS_FREE(lab); IOUPOS_FREE(hu); IOUPOS_FREE(lf);
    IOUPOS_FREE(axes); IOUPOS_FREE(org); IOUPOS_FREE(warp); IOUPOS_FREE(wave);
    return ioupos__fail(IOUPOS_ENOMEM, "phantom: out of memory for a %dx%dx%d volume", o->nx,
                        o->ny, o->nz);
  }

  /* the case, independent streams for anatomy and noise */
  ioupos_rng_seed(&root, o->seed);
  rng = ioupos_rng_split(&root, 1);
  ioupos__ph_draw_case(&rng, &cs);
  norg = ioupos__ph_build(&rng, &cs, org);
  {
    double body_scale = ioupos__ph_u(&rng, 0.94, 1.04);
    fit_xy = o->nx * o->spacing[0] / IOUPOS__PH_REF_X;
    if (o->ny * o->spacing[1] / IOUPOS__PH_REF_Y < fit_xy) fit_xy = o->ny * o->spacing[1] / IOUPOS__PH_REF_Y;
    fit_z = o->nz * o->spacing[2] / IOUPOS__PH_REF_Z;
    if (fit_xy > 1.0) fit_xy = 1.0;
    if (fit_z > 1.0) fit_z = 1.0;
    scale[0] = scale[1] = fit_xy * body_scale;
    scale[2] = fit_z * ioupos__ph_u(&rng, 0.95, 1.03);
  }
  gr.nx = o->nx, gr.ny = o->ny, gr.nz = o->nz;
  gr.px = axes, gr.py = axes + o->nx, gr.pz = axes + o->nx + o->ny;
  for (i = 0; i < o->nx; ++i) gr.px[i] = o->spacing[0] * (i - 0.5 * (o->nx - 1)) / scale[0];
  for (j = 0; j < o->ny; ++j) gr.py[j] = o->spacing[1] * (j - 0.5 * (o->ny - 1)) / scale[1];
  for (k = 0; k < o->nz; ++k) gr.pz[k] = o->spacing[2] * (k - 0.5 * (o->nz - 1)) / scale[2];
  for (c = 0; c < norg; ++c) ioupos__ph_tabulate(&org[c], &gr, warp + (size_t)c * 2 * nsum);
  /* bowel waves: cos(kx x + (ky y + kz z + ph)) = cos(kx x) C - sin(kx x) S per row */
  for (c = 0; c < IOUPOS__PH_NWAVES; ++c)
    for (i = 0; i < o->nx; ++i) {
      wave[(size_t)(2 * c) * o->nx + i] = cos(cs.bowel_k[c][0] * gr.px[i]);
      wave[(size_t)(2 * c + 1) * o->nx + i] = sin(cs.bowel_k[c][0] * gr.px[i]);
    }

  /* body layers and bowel */
  for (k = 0; k < o->nz; ++k) {
    double z = gr.pz[k];
    double fa = 1.0 + cs.body_wa * sin(2.0 * IOUPOS__PH_PI * z / 170.0 + cs.body_pa);
    double fb = 1.0 + cs.body_wb * sin(2.0 * IOUPOS__PH_PI * z / 150.0 + cs.body_pb);
    double a = cs.body_a * fa, ba = cs.body_b_ant * fb, bp = cs.body_b_post * fb;
    double bw[IOUPOS__PH_NWAVES][2];
    int t;
    for (j = 0; j < o->ny; ++j) {
      double y = gr.py[j];
      for (t = 0; t < IOUPOS__PH_NWAVES; ++t) {
        double arg = cs.bowel_k[t][1] * y + cs.bowel_k[t][2] * z + cs.bowel_ph[t];
        bw[t][0] = cos(arg);
        bw[t][1] = sin(arg);
      }
      for (i = 0; i < o->nx; ++i) {
        double x = gr.px[i], val;
        size_t vv = ((size_t)k * o->ny + j) * o->nx + i;
        uint8_t reg;
        if (ioupos__ph_outline(x, y, a, ba, bp) >= 1.0) {
          hu[vv] = -1000.0f;
          continue;
        }
        if (ioupos__ph_outline(x, y, a - 2.5, ba - 2.5, bp - 2.5) >= 1.0) {
          val = 20.0, reg = 1; /* skin */
        } else if (ioupos__ph_outline(x, y, a - cs.fat_lat, ba - cs.fat_ant, bp - cs.fat_post) >= 1.0) {
          val = cs.hu_fat - 5.0, reg = 1;
        } else if (ioupos__ph_outline(x, y, a - cs.fat_lat - cs.wall, ba - cs.fat_ant - cs.wall,
                                      bp - cs.fat_post - cs.wall) >= 1.0) {
          val = cs.hu_muscle, reg = 1;
          /* ribs in the wall of the upper slices: oblique bands, lower towards the front */
          {
            double th = atan2(y, x < 0 ? -x : x) / IOUPOS__PH_PI; /* -0.5 back .. 0.5 front */
            double zmin = -15.0 + 70.0 * (th + 0.5) * (th + 0.5);
            if (z > zmin && th < 0.35) {
              double ph = (z - 150.0 * th) / 24.0 + cs.rib_phase;
              if (ph - floor(ph) < 0.25) val = 450.0;
            }
          }
        } else {
          double f = 0.0, bias;
          val = cs.hu_fat, reg = 2;
          for (t = 0; t < IOUPOS__PH_NWAVES; ++t)
            f += wave[(size_t)(2 * t) * o->nx + i] * bw[t][0] -
                 wave[(size_t)(2 * t + 1) * o->nx + i] * bw[t][1];
          f *= 1.0 / IOUPOS__PH_NWAVES;
          bias = 0.28 * ioupos__ph_clamp((20.0 - z) / 60.0, 0.0, 1.0) +
                 0.2 * ioupos__ph_clamp(y / 60.0, -1.0, 1.0) - 0.2;
          if (f + bias > 0.05) val = f > 0.5 && y > -30.0 ? -850.0 : 25.0;
        }
        hu[vv] = (float)val;
        region[vv] = reg;
      }
    }
  }

  /* organs and vessels */
  for (c = 0; c < norg; ++c) ioupos__ph_paint(&org[c], &cs, &gr, region, lab, hu);

  /* thorax above the diaphragm; posterior muscles and bone */
  for (k = 0; k < o->nz; ++k) {
    double z = gr.pz[k];
    double per = (z + 200.0) / 32.0, phase = per - floor(per); /* vertebral level */
    int disc = phase < 0.2, endplate = phase < 0.26 || phase > 0.95;
    int arch = phase > 0.25 && phase < 0.85, tproc = phase > 0.4 && phase < 0.7;
    double psoas = 3.0 + 17.0 * ioupos__ph_clamp((15.0 - z) / 90.0, 0.0, 1.0);
    for (j = 0; j < o->ny; ++j) {
      double y = gr.py[j];
      for (i = 0; i < o->nx; ++i) {
        double x = gr.px[i], ax = x < 0 ? -x : x, val = 0.0, q;
        size_t vv = ((size_t)k * o->ny + j) * o->nx + i;
        int set = 0;
        if (region[vv] == 0) continue;
        if (region[vv] == 2 && lab[vv] == 0) {
          double zd = ioupos__ph_diaphragm(&cs, x, y);
          if (z > zd - 5.0) {
            set = 1;
            if (z < zd) val = cs.hu_muscle; /* diaphragm */
            else if ((x + 25.0) * (x + 25.0) / (62.0 * 62.0) +
                         (y - 25.0) * (y - 25.0) / (58.0 * 58.0) < 1.0)
              val = 40.0; /* heart */
            else val = -850.0; /* lung */
          }
        }
        /* paraspinal muscles */
        if ((ax - 32.0) * (ax - 32.0) / (25.0 * 25.0) + (y + 86.0) * (y + 86.0) / (19.0 * 19.0) < 1.0)
          val = cs.hu_muscle, set = 2;
        /* psoas */
        if (z < 15.0 && (ax - 38.0) * (ax - 38.0) + (y + 48.0) * (y + 48.0) < psoas * psoas)
          val = cs.hu_muscle, set = 2;
        /* vertebral body */
        q = x * x / (21.0 * 21.0) + (y + 54.0) * (y + 54.0) / (17.0 * 17.0);
        if (q < 1.0) {
          val = disc ? 80.0 : (endplate || q > 0.76) ? 600.0 : 200.0;
          set = 2;
        }
        /* arch around the canal, spinous and transverse processes, canal */
        q = x * x / (17.0 * 17.0) + (y + 79.0) * (y + 79.0) / (14.0 * 14.0);
        if (arch && q < 1.0) val = 500.0, set = 2;
        if (arch && x * x / 25.0 + (y + 98.0) * (y + 98.0) / 100.0 < 1.0) val = 500.0, set = 2;
        if (tproc && (ax - 26.0) * (ax - 26.0) / 196.0 + (y + 76.0) * (y + 76.0) / 25.0 < 1.0)
          val = 500.0, set = 2;
        if (x * x / 100.0 + (y + 79.0) * (y + 79.0) / 64.0 < 1.0) val = 20.0, set = 2;
        if (set) {
          hu[vv] = (float)val;
          if (set == 2) lab[vv] = 0;
        }
      }
    }
  }

  /* noise, rounding, the label volume */
  rng = ioupos_rng_split(&root, 2);
  for (v = 0; v < nvox; v += 2) {
    double g0 = 0.0, g1 = 0.0, h;
    if (o->noise_sd > 0.0) {
      double u1 = 1.0 - ioupos_rng_uniform(&rng), u2 = ioupos_rng_uniform(&rng);
      double rr = o->noise_sd * sqrt(-2.0 * log(u1));
      g0 = rr * cos(2.0 * IOUPOS__PH_PI * u2);
      g1 = rr * sin(2.0 * IOUPOS__PH_PI * u2);
    }
    h = floor(ioupos__ph_clamp(hu[v] + g0, -1024.0, 3071.0) + 0.5);
    hu[v] = (float)h;
    lf[v] = (float)lab[v];
    if (v + 1 < nvox) {
      h = floor(ioupos__ph_clamp(hu[v + 1] + g1, -1024.0, 3071.0) + 0.5);
      hu[v + 1] = (float)h;
      lf[v + 1] = (float)lab[v + 1];
    }
  }
  IOUPOS_FREE(region);
  IOUPOS_FREE(lab);
  IOUPOS_FREE(axes);
  IOUPOS_FREE(org);
  IOUPOS_FREE(warp);
  IOUPOS_FREE(wave);

  image->dim[0] = label->dim[0] = o->nx;
  image->dim[1] = label->dim[1] = o->ny;
  image->dim[2] = label->dim[2] = o->nz;
  image->data = hu;
  label->data = lf;
  for (i = 0; i < 4; ++i)
    for (j = 0; j < 4; ++j) image->affine[i][j] = 0.0;
  for (c = 0; c < 3; ++c) {
    int n = c == 0 ? o->nx : c == 1 ? o->ny : o->nz;
    image->affine[c][c] = o->spacing[c];
    image->affine[c][3] = -0.5 * (n - 1) * o->spacing[c];
  }
  image->affine[3][3] = 1.0;
  memcpy(label->affine, image->affine, sizeof image->affine);
  return IOUPOS_OK;
}

#endif /* IOUPOS_WIP_PHANTOM_IMPL */
