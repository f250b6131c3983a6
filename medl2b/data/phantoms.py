"""Phantom data in the exact public layouts of PROMISE12 and ISIC 2019.

No public dataset can be downloaded where medl2b is tested, so the tests (and the
demo) run on phantoms that the loaders cannot tell apart from the real releases
by format: real MetaImage headers written by SimpleITK (``MET_SHORT`` and
``MET_FLOAT``, one ``CompressedData = True`` case with a ``.zraw`` file, mixed grids,
a flipped and an oblique direction matrix, varied origins), real JPEG files and
the ISIC CSVs with their quirks (``1.0``/``0.0`` and ``1``/``0``, ``_downsampled``
names, empty ``lesion_id``). The content is synthetic but learnable: a two-lobed
prostate-like gland that a 2-D UNet can segment, and lesions whose class shows
in colour, shape and texture.

Everything is seeded; case ``i`` (image ``i``) depends only on ``(seed, i)``.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw
from scipy import ndimage, special

__all__ = ["ISIC_CLASSES", "synth_isic2019", "synth_promise12"]

# --------------------------------------------------------------------------- PROMISE12

# (in-plane size, in-plane spacing mm, slice-count range, slice-thickness range mm)
_P12_GRIDS = (
    ((512, 512), 0.2734, (24, 40), (2.2, 3.0)),
    ((320, 320), 0.6, (18, 24), (3.6, 3.6)),
    ((256, 256), 0.6, (26, 32), (4.0, 4.0)),
)


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) linear-interpolation weights mapping a coarse axis onto a fine one."""
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    lo = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
    frac = pos - lo
    w = np.zeros((n_out, n_in), dtype=np.float32)
    w[np.arange(n_out), lo] = 1.0 - frac
    w[np.arange(n_out), lo + 1] = frac
    return w


def _smooth_field(rng: np.random.Generator, shape_xyz: tuple[int, int, int], spacing: tuple[float, float, float],
                  corr_mm: float) -> np.ndarray:
    """Smooth zero-mean, unit-std random field of shape (X, Y, Z), correlation length ~corr_mm in-plane.

    White noise on a coarse grid (one node per ``corr_mm``) is Gaussian-filtered and
    interpolated linearly onto the fine in-plane grid; along z it is filtered over
    about one slice.
    """
    nx, ny, nz = shape_xyz
    cx = max(3, int(math.ceil(nx * spacing[0] / corr_mm)) + 2)
    cy = max(3, int(math.ceil(ny * spacing[1] / corr_mm)) + 2)
    coarse = ndimage.gaussian_filter(rng.standard_normal((cx, cy, nz)).astype(np.float32), sigma=(1.0, 1.0, 0.7))
    coarse /= coarse.std() + 1e-8
    wx, wy = _interp_matrix(nx, cx), _interp_matrix(ny, cy)
    return np.einsum("ia,abz,jb->ijz", wx, coarse, wy, optimize=True).astype(np.float32)


def _soft_ellipse(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, ax: float, ay: float,
                  edge_mm: float = 1.0) -> np.ndarray:
    """Soft 0..1 occupancy of a 2-D ellipse with a ~``edge_mm`` wide rim; shape of ``xx``."""
    d = np.sqrt(((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2)
    return np.clip((1.0 - d) * min(ax, ay) / edge_mm + 0.5, 0.0, 1.0).astype(np.float32)


def _blend(img: np.ndarray, value: np.ndarray | float, alpha: np.ndarray) -> None:
    """In place: ``img = img * (1 - alpha) + value * alpha`` (alpha broadcasts)."""
    img *= 1.0 - alpha
    img += value * alpha


def _gland(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, z: np.ndarray, fov_z: float) -> dict:
    """Draw a prostate-like gland; return its implicit function on its bounding box.

    The gland is the smooth union of two lobes (ellipses at ±d laterally whose
    outlines carry a few random Fourier harmonics that drift with z), scaled along z
    by a taper that is wider at the base (superior) than at the apex (inferior).
    ``f < 0`` inside. Coordinates are in mm, 1-D axes ``x`` (X,), ``y`` (Y,), ``z`` (Z,).
    """
    a = rng.uniform(17.0, 26.0)           # lateral half-width (mm)
    b = rng.uniform(12.0, 18.0)           # antero-posterior half-depth
    hz = min(rng.uniform(16.0, 24.0), 0.38 * fov_z)
    cx, cy = rng.uniform(-10.0, 10.0), rng.uniform(-4.0, 12.0)
    cz = rng.uniform(-0.12, 0.12) * fov_z
    d = rng.uniform(0.22, 0.38) * a
    harm = [(k, rng.uniform(0.0, 0.05), rng.uniform(0, 2 * np.pi), rng.uniform(-1.5, 1.5)) for k in range(2, 6)]
    ix = np.nonzero(np.abs(x - cx) <= 1.6 * a)[0]
    iy = np.nonzero(np.abs(y - cy) <= 1.6 * b)[0]
    iz = np.nonzero(np.abs(z - cz) < hz)[0]
    box = (slice(ix[0], ix[-1] + 1), slice(iy[0], iy[-1] + 1), slice(iz[0], iz[-1] + 1)) if (
        ix.size and iy.size and iz.size) else None
    out = {"box": box, "center": (cx, cy, cz), "a": a, "b": b, "hz": hz}
    if box is None:
        return out
    xx = x[box[0]][:, None, None]
    yy = y[box[1]][None, :, None]
    t = ((z[box[2]] - cz) / hz)[None, None, :]
    taper = np.clip(1.0 - t * t, 0.0, None) ** 0.6 * (1.0 + 0.15 * t)  # base (t > 0) wider than apex
    taper = np.maximum(taper, 1e-3)
    lobes = []
    for side in (-1.0, 1.0):
        dx = xx - (cx + side * d * taper)
        dy = yy - cy
        theta = np.arctan2(dy, side * dx)
        radius = np.ones_like(theta)
        for k, amp, phase, drift in harm:
            radius = radius + amp * np.cos(k * theta + phase + drift * t)
        rho = np.sqrt((dx / ((a - d) * taper)) ** 2 + (dy / (b * taper)) ** 2)
        lobes.append(rho / radius - 1.0)
    kappa = 0.12
    f = -kappa * np.logaddexp(-lobes[0] / kappa, -lobes[1] / kappa)
    out["f"] = f.astype(np.float32)
    return out


def _promise_case(index: int, seed: int, grid_scale: float) -> dict:
    """Build one phantom case: image (X, Y, Z), mask (X, Y, Z) uint8 and its MetaImage geometry."""
    rng = np.random.default_rng([seed, index, 12])
    (nx0, ny0), sxy0, nz_range, dz_range = _P12_GRIDS[index % len(_P12_GRIDS)]
    sxy0 = sxy0 * rng.uniform(0.97, 1.03)
    nz0 = int(rng.integers(nz_range[0], nz_range[1] + 1))
    dz0 = float(rng.uniform(*dz_range))
    nx, ny = max(16, int(round(nx0 * grid_scale))), max(16, int(round(ny0 * grid_scale)))
    nz = max(8, int(round(nz0 * math.sqrt(grid_scale))))
    spacing = (sxy0 * nx0 / nx, sxy0 * ny0 / ny, dz0 * nz0 / nz)
    x = ((np.arange(nx) - (nx - 1) / 2.0) * spacing[0]).astype(np.float32)
    y = ((np.arange(ny) - (ny - 1) / 2.0) * spacing[1]).astype(np.float32)  # + = posterior
    z = ((np.arange(nz) - (nz - 1) / 2.0) * spacing[2]).astype(np.float32)  # + = superior
    xx, yy = np.meshgrid(x, y, indexing="ij")
    shape = (nx, ny, nz)

    gland = _gland(rng, x, y, z, nz * spacing[2])
    gcx, gcy, gcz = gland["center"]
    a, b, hz = gland["a"], gland["b"], gland["hz"]

    # Background: air, a body outline filled with textured fat.
    tex_fine = _smooth_field(rng, shape, spacing, 2.5)
    tex_coarse = _smooth_field(rng, shape, spacing, 9.0)
    img = np.full(shape, 0.02, dtype=np.float32)
    body = _soft_ellipse(xx, yy, rng.uniform(-8, 8), rng.uniform(5, 20), rng.uniform(150, 185),
                         rng.uniform(95, 120), 2.0)
    _blend(img, 0.66 + 0.07 * tex_fine + 0.05 * tex_coarse, body[:, :, None])

    # Muscles: obturator internus on both sides, levator band behind, all z.
    muscle = 0.27 + 0.035 * tex_fine
    for side in (-1.0, 1.0):
        mx = gcx + side * (a + rng.uniform(18.0, 28.0))
        alpha = _soft_ellipse(xx, yy, mx, gcy + rng.uniform(-5, 5), rng.uniform(8, 13), rng.uniform(26, 36), 1.5)
        _blend(img, muscle, alpha[:, :, None])
    levator = _soft_ellipse(xx, yy, gcx, gcy + b + rng.uniform(22, 30), rng.uniform(40, 55), rng.uniform(5, 8), 1.5)
    _blend(img, muscle, levator[:, :, None])

    # Rectum behind the gland: dark wall, lumen with gas or content.
    rx, ry, rr = gcx + rng.uniform(-4, 4), gcy + b + rng.uniform(9.0, 14.0), rng.uniform(9.0, 14.0)
    _blend(img, 0.30 + 0.03 * tex_fine, _soft_ellipse(xx, yy, rx, ry, rr, rr * 0.8, 1.0)[:, :, None])
    lumen = 0.06 if rng.random() < 0.5 else 0.5
    _blend(img, lumen + 0.04 * tex_fine, _soft_ellipse(xx, yy, rx, ry, rr - 3.0, rr * 0.8 - 3.0, 1.0)[:, :, None])

    # Pubic symphysis in front, inferior half: dark cortex, grey marrow.
    px, py = gcx + rng.uniform(-3, 3), gcy - b - rng.uniform(18.0, 26.0)
    z_window = (1.0 / (1.0 + np.exp((z - (gcz + 0.2 * hz)) / 3.0))).astype(np.float32)
    bone = _soft_ellipse(xx, yy, px, py, rng.uniform(14, 20), rng.uniform(7, 10), 1.0)
    _blend(img, 0.12, bone[:, :, None] * z_window[None, None, :])
    marrow = _soft_ellipse(xx, yy, px, py, 9.0, 4.0, 1.0)
    _blend(img, 0.45 + 0.04 * tex_fine, marrow[:, :, None] * z_window[None, None, :])

    # Bladder: bright urine with a dark wall, anterior and superior to the gland.
    bx, by = gcx + rng.uniform(-6, 6), gcy - 0.4 * b - rng.uniform(8.0, 14.0)
    bz = gcz + hz + rng.uniform(12.0, 24.0)
    ax_, ay_, az_ = rng.uniform(30, 45), rng.uniform(22, 32), rng.uniform(18, 30)
    in_plane = ((xx - bx) / ax_) ** 2 + ((yy - by) / ay_) ** 2
    dist = np.sqrt(in_plane[:, :, None] + (((z - bz) / az_) ** 2)[None, None, :])
    wall = np.clip((1.0 - dist) * 22.0 + 0.5, 0.0, 1.0)
    inner = np.clip((1.0 - 2.5 / 22.0 - dist) * 22.0 + 0.5, 0.0, 1.0)
    _blend(img, 0.32, wall)
    _blend(img, 0.95 + 0.02 * tex_coarse, inner)
    del dist, wall, inner

    # Seminal vesicles: posterior-superior, intermediate-bright.
    sv_z = np.exp(-(((z - (gcz + 0.95 * hz)) / 6.0) ** 2)).astype(np.float32)
    for side in (-1.0, 1.0):
        sv = _soft_ellipse(xx, yy, gcx + side * rng.uniform(12, 18), gcy + 0.8 * b, rng.uniform(9, 13),
                           rng.uniform(3.5, 5.0), 1.0)
        _blend(img, 0.62 + 0.06 * tex_fine, sv[:, :, None] * sv_z[None, None, :])

    # The gland itself: darker central gland, brighter peripheral zone, a dark capsule.
    mask = np.zeros(shape, dtype=np.uint8)
    if gland["box"] is not None:
        box, f = gland["box"], gland["f"]
        sub = img[box]
        capsule = np.clip(1.0 - np.abs(f - 0.04) / 0.05, 0.0, 1.0)
        _blend(sub, 0.25, capsule)
        inside = np.clip(0.5 - f / 0.05, 0.0, 1.0)
        central = special.expit(-(f + 0.35) / 0.07)
        value = 0.54 - 0.16 * central + 0.04 * tex_fine[box]
        _blend(sub, value, inside)
        img[box] = sub
        mask[box] = (f < 0).astype(np.uint8)

    # Smooth multiplicative bias field, optionally an endorectal-coil hot spot.
    xn, yn, zn = x / max(abs(x).max(), 1.0), y / max(abs(y).max(), 1.0), z / max(abs(z).max(), 1.0)
    c = rng.uniform(-0.18, 0.18, size=5)
    bias2d = np.exp(c[0] * xn[:, None] + c[1] * yn[None, :] + c[2] * xn[:, None] ** 2 + c[3] * yn[None, :] ** 2)
    if rng.random() < 0.4:
        bias2d = bias2d * (1.0 + 0.8 * np.exp(-((xx - rx) ** 2 + (yy - ry) ** 2) / (2 * 25.0 ** 2)))
    bias = bias2d[:, :, None] * np.exp(c[4] * zn)[None, None, :]
    img *= bias.astype(np.float32)

    # Rician noise: magnitude of a complex signal with Gaussian noise on both channels.
    sigma = float(rng.uniform(0.02, 0.04))
    real = img + sigma * rng.standard_normal(shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(shape, dtype=np.float32)
    img = np.sqrt(real * real + imag * imag)

    pixel = "float32" if index % 4 == 1 else "int16"
    if pixel == "int16":
        img = np.clip(np.round(img * rng.uniform(600, 1200)), 0, 32767).astype(np.int16)
    else:
        img = (img * rng.uniform(150, 500) + rng.uniform(-5, 5)).astype(np.float32)

    if index % 6 == 3:
        direction = np.diag([-1.0, 1.0, 1.0])  # mirrored x axis (improper, as in some headers)
    elif index % 6 == 5:
        tilt = math.radians(rng.uniform(4.0, 10.0))  # oblique axial: tilted about x
        direction = np.array([[1, 0, 0], [0, math.cos(tilt), -math.sin(tilt)], [0, math.sin(tilt), math.cos(tilt)]])
    else:
        direction = np.eye(3)
    extent = np.array([nx - 1, ny - 1, nz - 1]) * np.array(spacing)
    origin = -direction @ (extent / 2.0) + np.array([rng.uniform(-30, 30), rng.uniform(-30, 30), rng.uniform(-60, 20)])
    return {"image": img, "mask": mask, "spacing": spacing, "origin": tuple(origin.tolist()),
            "direction": tuple(direction.reshape(-1).tolist()), "compressed": index % 5 == 2}


def _write_mha(array_xyz: np.ndarray, path: Path, *, spacing, origin, direction, compressed: bool) -> None:
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array_xyz, (2, 1, 0))))
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in origin))
    img.SetDirection(tuple(float(d) for d in direction))
    sitk.WriteImage(img, str(path), useCompression=compressed)


def synth_promise12(out: str | os.PathLike, *, n_cases: int = 12, seed: int = 0, grid_scale: float = 1.0) -> list[Path]:
    """Write PROMISE12-like MetaImage phantoms ``CaseNN.mhd`` + ``CaseNN_segmentation.mhd``.

    The cases cycle through the three public acquisition grids (512×512×24..40 at
    ~0.27 mm in-plane and 2.2–3 mm slices; 320×320×18..24 at ~0.6×0.6×3.6 mm;
    256×256×26..32 at ~0.6×0.6×4 mm). Case ``i`` is stored as ``MET_FLOAT`` when
    ``i % 4 == 1`` (``MET_SHORT`` otherwise), compressed (``.zraw``) when
    ``i % 5 == 2``, with a mirrored direction ``diag(-1, 1, 1)`` when ``i % 6 == 3`` and
    an oblique (tilted) one when ``i % 6 == 5``; origins vary. Masks are uint8 0/1
    (``MET_UCHAR``) on the image grid.

    Args:
        out: Folder to write into (created).
        n_cases: Number of cases, ``Case00`` .. ``Case{n-1}``.
        seed: Random seed; case ``i`` depends only on ``(seed, i)``.
        grid_scale: Shrinks the voxel counts while keeping the physical field of
            view: in-plane counts scale by ``grid_scale``, the slice count by
            ``sqrt(grid_scale)`` (at least 8 slices); spacings grow to match. Use
            e.g. 0.25 in tests.

    Returns:
        Paths of the written image headers ``CaseNN.mhd``, in order.
    """
    if n_cases < 1 or n_cases > 100:
        raise ValueError(f"n_cases must lie in [1, 100], got {n_cases}")
    if not 0.02 <= grid_scale <= 1.0:
        raise ValueError(f"grid_scale must lie in [0.02, 1], got {grid_scale}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_cases):
        case = _promise_case(i, seed, grid_scale)
        geo = {"spacing": case["spacing"], "origin": case["origin"], "direction": case["direction"],
               "compressed": case["compressed"]}
        name = f"Case{i:02d}"
        _write_mha(case["image"], out / f"{name}.mhd", **geo)
        _write_mha(case["mask"], out / f"{name}_segmentation.mhd", **geo)
        paths.append(out / f"{name}.mhd")
    return paths


# --------------------------------------------------------------------------- ISIC 2019

ISIC_CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
_ISIC_COUNTS = {"MEL": 4522, "NV": 12875, "BCC": 3323, "AK": 867, "BKL": 2624, "DF": 239, "VASC": 253, "SCC": 628}
_SITES = ("anterior torso", "upper extremity", "posterior torso", "lower extremity", "head/neck",
          "lateral torso", "palms/soles", "oral/genital", "")
_SKIN = ((0.93, 0.77, 0.70), (0.89, 0.70, 0.62), (0.84, 0.64, 0.53), (0.78, 0.58, 0.47), (0.95, 0.80, 0.78))
_MSK_SIZES = ((722, 542), (1024, 768), (800, 600), (640, 480), (1000, 750))


def _class_counts(n: int) -> dict[str, int]:
    """ISIC 2019 class proportions scaled to ``n``, each class at least min(3, n // 8)."""
    floor = min(3, n // len(ISIC_CLASSES))
    total = sum(_ISIC_COUNTS.values())
    counts = {c: max(floor, int(round(n * k / total))) for c, k in _ISIC_COUNTS.items()}
    counts["NV"] += n - sum(counts.values())
    while counts["NV"] < floor:  # tiny n: take back from the largest others
        donor = max((c for c in counts if c != "NV"), key=lambda c: counts[c])
        counts[donor] -= 1
        counts["NV"] += 1
    return counts


def _texture(rng: np.random.Generator, n: int = 64, sigma: float = 2.0) -> np.ndarray:
    """Unit-std smooth noise on an (n, n) canonical lesion grid spanning [-2, 2]²."""
    f = ndimage.gaussian_filter(rng.standard_normal((n, n)), sigma, mode="wrap")
    return (f / (f.std() + 1e-8)).astype(np.float32)


def _sample(tex: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Sample a canonical (n, n) texture at lesion coordinates ``u, v`` in [-2, 2] (clamped outside)."""
    n = tex.shape[0]
    coords = np.stack([(u + 2.0) / 4.0 * (n - 1), (v + 2.0) / 4.0 * (n - 1)])
    return ndimage.map_coordinates(tex, coords, order=1, mode="nearest").astype(np.float32)


def _lesion_recipe(rng: np.random.Generator, cls: str) -> dict:
    """Everything that stays fixed across the images of one lesion."""
    radius = {"NV": (0.17, 0.28), "MEL": (0.22, 0.36), "BCC": (0.15, 0.27), "AK": (0.2, 0.33),
              "BKL": (0.2, 0.32), "DF": (0.1, 0.15), "VASC": (0.12, 0.22), "SCC": (0.17, 0.28)}[cls]
    irregular = {"MEL": 0.11, "AK": 0.07, "BKL": 0.05, "SCC": 0.06, "BCC": 0.05}.get(cls, 0.025)
    return {
        "cls": cls,
        "radius": rng.uniform(*radius),
        "aspect": rng.uniform(1.0, 1.35 if cls != "DF" else 1.15),
        "harmonics": [(k, rng.uniform(0, irregular) / (1 + 0.3 * k), rng.uniform(0, 2 * np.pi)) for k in range(2, 8)],
        "tex": [_texture(rng, sigma=s) for s in (1.2, 2.5, 5.0)],
        "dots": rng.uniform(-1.0, 1.0, size=(40, 2)),
        "dot_r": rng.uniform(0.04, 0.12, size=40),
        "tone": rng.uniform(0.8, 1.15),
        "skin": np.array(_SKIN[int(rng.integers(len(_SKIN)))]) * rng.uniform(0.95, 1.03),
    }


def _dots(u: np.ndarray, v: np.ndarray, centres: np.ndarray, radii: np.ndarray, n: int, scale: float) -> np.ndarray:
    """Soft union of ``n`` small discs (lesion coordinates), 0..1."""
    acc = np.zeros_like(u)
    for (du, dv), r in zip(centres[:n], radii[:n]):
        d = np.sqrt((u - du) ** 2 + (v - dv) ** 2) / (r * scale)
        acc = np.maximum(acc, np.clip(1.5 - 1.5 * d, 0.0, 1.0))
    return acc


def _render_lesion(recipe: dict, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Render one view of a lesion on skin; float32 (H, W, 3) in [0, 1]."""
    cls = recipe["cls"]
    tex_f, tex_m, tex_c = recipe["tex"]
    short = min(width, height)
    jj, ii = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    px = (jj - width / 2.0) / short
    py = (ii - height / 2.0) / short

    # Skin: tone, mottling, pores.
    skin = recipe["skin"][None, None, :] * (1.0 + 0.03 * _sample(tex_c, px * 1.3, py * 1.3)[..., None])
    skin = skin * (1.0 + 0.015 * rng.standard_normal((height, width, 1)))
    img = skin.astype(np.float32)

    # Lesion frame: rotated, scaled and shifted per view.
    angle = rng.uniform(0, 2 * np.pi)
    scale = recipe["radius"] * rng.uniform(0.9, 1.1)
    cx, cy = rng.uniform(-0.08, 0.08, size=2)
    ca, sa = math.cos(angle), math.sin(angle)
    u = ((px - cx) * ca + (py - cy) * sa) / scale
    v = (-(px - cx) * sa + (py - cy) * ca) / scale * recipe["aspect"]
    rho = np.sqrt(u * u + v * v)
    theta = np.arctan2(v, u)
    edge = np.ones_like(rho)
    for k, amp, phase in recipe["harmonics"]:
        edge = edge + amp * np.cos(k * theta + phase)
    dist = rho / edge  # < 1 inside
    soft = {"AK": 0.25, "NV": 0.08, "MEL": 0.06}.get(cls, 0.05)
    inside = np.clip((1.0 - dist) / soft + 0.5, 0.0, 1.0)[..., None]
    f, m, c = (_sample(t, np.clip(u, -2, 2), np.clip(v, -2, 2)) for t in recipe["tex"])
    tone = recipe["tone"]

    def rgb(r: float, g: float, b: float) -> np.ndarray:
        return np.array([r, g, b], dtype=np.float32)[None, None, :]

    if cls == "NV":  # round, uniform brown, faint regular network
        colour = rgb(0.50, 0.33, 0.22) / tone * (1.0 - 0.15 * np.clip(1 - dist, 0, 1)[..., None])
        colour = colour * (1.0 + 0.05 * np.sin(u * 28)[..., None] * np.sin(v * 28)[..., None])
    elif cls == "MEL":  # irregular, multicoloured: black, dark brown, blue-grey veil, red, light brown
        palette = np.stack([rgb(0.18, 0.11, 0.09), rgb(0.36, 0.22, 0.15), rgb(0.46, 0.50, 0.62),
                            rgb(0.72, 0.38, 0.36), rgb(0.62, 0.45, 0.32)])[:, 0, 0, :]
        idx = np.clip(((m + 1.6 * c) * 1.2 + 2.5).astype(int), 0, 4)
        colour = palette[idx] * (1.0 + 0.08 * f[..., None])
    elif cls == "BCC":  # pink pearly, arborising vessels, blue-grey ovoid nests
        colour = rgb(0.93, 0.66, 0.66) * (1.0 + 0.04 * m[..., None]) + 0.05
        vessels = np.exp(-(m / 0.12) ** 2)[..., None] * np.clip(1.2 - dist, 0, 1)[..., None]
        colour = colour * (1 - vessels) + rgb(0.72, 0.10, 0.14) * vessels
        nests = _dots(u, v, recipe["dots"], recipe["dot_r"], 4, 1.4)[..., None]
        colour = colour * (1 - 0.8 * nests) + rgb(0.40, 0.45, 0.55) * 0.8 * nests
    elif cls == "AK":  # rough red patch with white scale and follicle openings
        colour = rgb(0.86, 0.46, 0.42) * (1.0 + 0.12 * f[..., None])
        scale_ = np.clip((f - 0.8) * 2.0, 0, 1)[..., None]
        colour = colour * (1 - scale_) + rgb(0.96, 0.93, 0.88) * scale_
        follicles = _dots(u, v, recipe["dots"], recipe["dot_r"] * 0.5, 30, 1.0)[..., None]
        colour = colour * (1 - 0.7 * follicles) + rgb(0.97, 0.92, 0.88) * 0.7 * follicles
    elif cls == "BKL":  # waxy tan, cerebriform ridges, milia-like cysts
        ridges = 0.5 + 0.5 * np.sin(9.0 * (u + 0.6 * m))
        colour = rgb(0.74, 0.57, 0.40) / tone * (0.85 + 0.25 * ridges[..., None])
        milia = _dots(u, v, recipe["dots"], recipe["dot_r"] * 0.5, 12, 1.0)[..., None]
        colour = colour * (1 - milia) + rgb(0.98, 0.96, 0.90) * milia
    elif cls == "DF":  # small firm lesion: brown ring, central white scar
        ring = np.clip(dist * 1.6 - 0.5, 0, 1)[..., None]
        colour = rgb(0.93, 0.88, 0.84) * (1 - ring) + rgb(0.55, 0.38, 0.28) * ring
        colour = colour * (1.0 + 0.05 * f[..., None])
    elif cls == "VASC":  # red-purple lacunae separated by pale septa
        lacunae = _dots(u, v, recipe["dots"] * 0.75, recipe["dot_r"] * 2.2, 9, 1.0)[..., None]
        purple = np.clip(c, 0, 1)[..., None]
        base = rgb(0.70, 0.12, 0.18) * (1 - purple) + rgb(0.45, 0.12, 0.38) * purple
        colour = rgb(0.86, 0.62, 0.64) * (1 - lacunae) + base * lacunae
    else:  # SCC: keratin mass (white-yellow, scaly) with a red rim and glomerular vessels
        core = np.clip((0.75 - dist) / 0.15, 0, 1)[..., None]
        colour = rgb(0.86, 0.42, 0.42) * (1 - core) + rgb(0.93, 0.88, 0.70) * (1.0 + 0.1 * f[..., None]) * core
        glomeruli = _dots(u * 1.3, v * 1.3, recipe["dots"], recipe["dot_r"] * 0.35, 25, 1.0)[..., None]
        colour = colour * (1 - glomeruli * (1 - core)) + rgb(0.65, 0.08, 0.12) * glomeruli * (1 - core)
    img = img * (1 - inside) + np.clip(colour, 0, 1) * inside

    # Vignetting; sometimes the round dark field stop of a contact dermoscope.
    r_img = np.sqrt(px * px + py * py)
    img = img * (1.0 - 0.35 * np.clip(r_img / 0.75, 0, 1.5)[..., None] ** 3)
    if rng.random() < 0.3:
        stop = np.clip((r_img - rng.uniform(0.48, 0.6)) * 40.0, 0, 1)[..., None]
        img = img * (1 - stop) + 0.03 * stop
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def _draw_hairs(pil_img, rng: np.random.Generator) -> None:
    """Draw a few dark, gently curved hairs in place."""
    w, h = pil_img.size
    n = int(rng.choice([0, 0, 1, 2, 4, 8, 14]))
    draw = ImageDraw.Draw(pil_img)
    for _ in range(n):
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        heading = rng.uniform(0, 2 * np.pi)
        curl = rng.normal(0, 0.02)
        length = rng.uniform(0.2, 0.8) * max(w, h)
        steps = 20
        pts = []
        for _s in range(steps + 1):
            pts.append((x0, y0))
            x0 += math.cos(heading) * length / steps
            y0 += math.sin(heading) * length / steps
            heading += curl
        shade = int(rng.uniform(15, 70))
        width = max(1, int(rng.uniform(0.002, 0.005) * w))
        draw.line(pts, fill=(shade, int(shade * 0.8), int(shade * 0.7)), width=width)


def synth_isic2019(out: str | os.PathLike, *, n_images: int = 400, seed: int = 0) -> Path:
    """Write an ISIC 2019-like training release of phantom dermoscopy images.

    Layout (as the real release)::

        out/ISIC_2019_Training_Input/ISIC_XXXXXXX.jpg     (some ISIC_XXXXXXX_downsampled.jpg)
        out/ISIC_2019_Training_GroundTruth.csv            image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK
        out/ISIC_2019_Training_Metadata.csv               image,age_approx,anatom_site_general,lesion_id,sex

    Images come from three simulated sources: HAM10000-like (600×450, lesion ids
    ``HAM_*`` often shared by 2–4 images), BCN-like (1024×1024, ``BCN_*``) and
    MSK-like (various sizes, no lesion id, half of them ``_downsampled``; about 8%
    of all images). Classes follow the ISIC 2019 proportions, each present at least
    ``min(3, n_images // 8)`` times. GT rows are written with ``1.0``/``0.0`` or
    ``1``/``0`` at random; UNK is always 0.

    Args:
        out: Folder to write into (created).
        n_images: Number of images, >= 8.
        seed: Random seed.

    Returns:
        ``out`` as a Path.
    """
    if n_images < 8:
        raise ValueError(f"n_images must be >= 8, got {n_images}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    out = Path(out)
    img_dir = out / "ISIC_2019_Training_Input"
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 2019])

    # Lesions: class, source, number of images, shared metadata.
    entries = []
    for cls, count in _class_counts(n_images).items():
        left = count
        while left > 0:
            source = rng.choice(["HAM", "BCN", "MSK"], p=[0.57, 0.27, 0.16])
            group = 1 if source == "MSK" else min(left, int(rng.choice([1, 1, 1, 2, 2, 3, 4])))
            lesion_id = "" if source == "MSK" else f"{source}_{int(rng.integers(0, 10**7)):07d}"
            meta = {"age_approx": "" if rng.random() < 0.03 else f"{5 * int(rng.integers(2, 18))}.0",
                    "anatom_site_general": str(rng.choice(_SITES)),
                    "sex": "" if rng.random() < 0.02 else str(rng.choice(["male", "female"]))}
            recipe_seed = int(rng.integers(0, 2**31))
            for _ in range(group):
                entries.append({"cls": cls, "source": source, "lesion_id": lesion_id, "recipe": recipe_seed, **meta})
            left -= group
    order = rng.permutation(len(entries))
    ids = np.sort(rng.choice(73255, size=len(entries), replace=False))
    rows = []
    for rank, k in enumerate(order):
        e = entries[k]
        name = f"ISIC_{ids[rank]:07d}"
        if e["source"] == "MSK" and rng.random() < 0.5:
            name += "_downsampled"
        if e["source"] == "HAM":
            size = (600, 450)
        elif e["source"] == "BCN":
            size = (1024, 1024)
        else:
            size = _MSK_SIZES[int(rng.integers(len(_MSK_SIZES)))]
        rows.append({**e, "image": name, "size": size, "view": int(rng.integers(0, 2**31))})

    recipes: dict[int, dict] = {}
    for row in rows:
        if row["recipe"] not in recipes:
            recipes[row["recipe"]] = _lesion_recipe(np.random.default_rng(row["recipe"]), row["cls"])
        view_rng = np.random.default_rng(row["view"])
        w, h = row["size"]
        work = 224.0 / min(w, h)  # render small, then upscale
        arr = _render_lesion(recipes[row["recipe"]], view_rng, max(8, round(w * work)), max(8, round(h * work)))
        pil = Image.fromarray((arr * 255 + 0.5).astype(np.uint8)).resize((w, h), Image.BICUBIC)
        _draw_hairs(pil, view_rng)
        pil.save(img_dir / f"{row['image']}.jpg", quality=88)

    with open(out / "ISIC_2019_Training_GroundTruth.csv", "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["image", *ISIC_CLASSES, "UNK"])
        for row in rows:
            one, zero = ("1.0", "0.0") if rng.random() < 0.5 else ("1", "0")
            writer.writerow([row["image"], *[one if c == row["cls"] else zero for c in ISIC_CLASSES], zero])
    with open(out / "ISIC_2019_Training_Metadata.csv", "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["image", "age_approx", "anatom_site_general", "lesion_id", "sex"])
        for row in rows:
            writer.writerow([row["image"], row["age_approx"], row["anatom_site_general"], row["lesion_id"], row["sex"]])
    return out
