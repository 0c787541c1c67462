"""Fitting a morphable model to 2D (or 2.5D) landmarks by alternating regularised linear least squares.

The unknowns are a pose and the coefficients α_id, α_exp of  S = mean + A_id α_id + A_exp α_exp
(seed eq. 1). Each iteration solves two closed-form problems:

1. pose, shape fixed — scaled orthographic: the affine camera that best maps the model landmarks to
   the image (the "gold standard" linear estimate, Hartley & Zisserman alg. 7.2), projected to the
   nearest scaled rotation; with landmark depth (MediaPipe), a 3D similarity (Umeyama 1991) instead.
   Perspective: PnP (OpenCV solvePnP) with a focal-length guess.
2. shape, pose fixed — projection is linear in α, so  min Σ_k w_k ||P(α)_k − p_k||² + λ Σ (α_i / σ_i)²
   is one small normal-equation solve over the landmark rows only (never the whole mesh).

Jaw-line (contour) landmarks slide on a 3D face: before each shape step, each is re-assigned to the
model contour vertex whose projection lies nearest to it (as eos does), so the fit follows the
silhouette rather than a fixed surface point.

Frames: the model frame is y up, z towards the viewer (mm); the result's rotation maps it into the
image's mesh frame (x right, y down, z away from the camera). Image points are pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from facerecon.geometry.transforms import FLIP_YZ, similarity_transform

from .model import MorphableModel


@dataclass(frozen=True)
class Correspondence:
    """Which model surface point each image landmark is.

    vertex_ids: int (K, 3), weights: float (K, 3) barycentric weights (rows of zeros: unused landmark).
    landmark_weights: float (K,) how much each landmark counts in the fit.
    contour: optional {landmark index -> candidate vertex ids} for landmarks that slide on the jaw line.
    """

    vertex_ids: np.ndarray
    weights: np.ndarray
    landmark_weights: np.ndarray
    contour: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def used(self) -> np.ndarray:
        return (np.abs(self.weights).sum(1) > 0) & (self.landmark_weights > 0)


@dataclass(frozen=True)
class FitSettings:
    """iterations: alternations of pose and shape steps (closed form each), then joint_iterations
        Gauss-Newton steps on pose and shape together (orthographic camera).
    identity_prior, expression_prior: λ of the Tikhonov terms: the landmark error in model units (mm²)
        worth one unit of (α/σ)² — about the squared landmark noise in mm.
    depth_weight: weight of the landmarks' z rows relative to x, y (0 ignores landmark depth).
    perspective: fit a pinhole camera with ``focal_length`` (pixels; None = 1.2 × the longer image side)
        instead of a scaled orthographic one.
    """

    iterations: int = 5
    joint_iterations: int = 3
    identity_prior: float = 4.0
    expression_prior: float = 2.0
    depth_weight: float = 0.0
    perspective: bool = False
    focal_length: float | None = None


@dataclass(frozen=True)
class FitResult:
    """rotation (3, 3) model -> mesh frame; scale: px per model unit (orthographic) or 1 (perspective);
    translation (3,); identity (K_id,), expression (K_exp,) coefficients; vertices (N, 3) in the mesh
    frame — pixels (orthographic) or camera-frame mm (perspective, with camera_matrix (3, 3));
    residual_px: the final mean landmark re-projection error in pixels;
    vertex_ids, weights: (K, 3) the correspondence as finally fitted (contour landmarks slid)."""

    rotation: np.ndarray
    scale: float
    translation: np.ndarray
    identity: np.ndarray
    expression: np.ndarray
    vertices: np.ndarray
    residual_px: float
    camera_matrix: np.ndarray | None = None
    vertex_ids: np.ndarray | None = None
    weights: np.ndarray | None = None


class LandmarkFitter:
    """Fits one model; precomputes what does not change between images. Build once, reuse."""

    def __init__(self, model: MorphableModel, settings: FitSettings) -> None:
        self.model = model
        self.settings = settings
        # float32 like the model (a 35k-vertex, 144-component basis is 62 MB); landmark rows are gathered
        # into float64 for the solves.
        self.basis = np.concatenate([model.identity_basis, model.expression_basis], axis=1)
        std = np.concatenate([model.identity_std, model.expression_std]).astype(np.float64)
        prior = np.concatenate(
            [
                np.full(model.n_identity, settings.identity_prior),
                np.full(model.n_expression, settings.expression_prior),
            ]
        )
        self.prior_diagonal = prior / np.maximum(std, 1e-12) ** 2
        self.mean = model.mean.astype(np.float64)

    # -- helpers over landmark rows only ------------------------------------------------------------

    def _rows(self, vertex_ids: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean positions (K, 3) and basis rows (K, 3, C) of the landmark surface points."""
        mean = np.einsum("kj,kjc->kc", weights, self.mean[vertex_ids])
        flat = (vertex_ids[..., None] * 3 + np.arange(3)).reshape(len(vertex_ids), 3, 3)  # (K, 3 corners, xyz)
        basis = np.einsum("kj,kjcd->kcd", weights, self.basis[flat].astype(np.float64))
        return mean, basis

    def fit(
        self,
        points: np.ndarray,
        corr: Correspondence,
        image_size: tuple[int, int],
        identity: np.ndarray | None = None,
    ) -> FitResult:
        """Fit to ``points`` float (K, 2 or 3): image-frame pixels (x, y[, z away from the camera]).
        ``identity`` (K_id,): fit pose and expression only, the identity coefficients held at these (one
        identity for every frame of a video)."""
        settings = self.settings
        points = np.asarray(points, np.float64)
        # The prior pulls α towards ``centre`` (0, or the given identity held by a prior ~1e8 times stronger).
        centre = np.zeros(self.basis.shape[1])
        prior = self.prior_diagonal
        if identity is not None:
            identity = np.asarray(identity, np.float64).reshape(-1)
            if identity.shape != (self.model.n_identity,):
                raise ValueError(f"identity must be ({self.model.n_identity},), got {identity.shape}")
            centre[: self.model.n_identity] = identity
            prior = prior.copy()
            prior[: self.model.n_identity] = 1e8 * np.maximum(prior[: self.model.n_identity], 1e-6)
        held = (prior, centre)
        has_depth = points.shape[1] == 3 and settings.depth_weight > 0 and not settings.perspective
        used = corr.used.copy()
        ids, bary = corr.vertex_ids.copy(), corr.weights.astype(np.float64).copy()
        w = corr.landmark_weights.astype(np.float64)
        alpha = centre.copy()
        width, height = image_size
        focal = settings.focal_length or 1.2 * max(width, height)
        camera = np.array([[focal, 0, (width - 1) / 2], [0, focal, (height - 1) / 2], [0, 0, 1.0]])
        scale, rotation, translation = 1.0, FLIP_YZ.copy(), np.zeros(3)
        mean_rows, basis_rows = self._rows(ids[used], bary[used])
        for iteration in range(settings.iterations):
            shape_rows = mean_rows + basis_rows @ alpha
            target = points[used]
            if settings.perspective:
                rotation, translation = _pnp(shape_rows, target[:, :2], camera, rotation, translation, iteration)
            elif has_depth:
                scale, rotation, translation = similarity_transform(shape_rows, target, w[used])
            else:
                scale, rotation, translation = _scaled_orthographic(shape_rows, target[:, :2], w[used])
            if corr.contour:
                self._slide_contours(ids, bary, used, points, corr, alpha, scale, rotation, translation, camera)
                mean_rows, basis_rows = self._rows(ids[used], bary[used])
            alpha = self._solve_shape(
                mean_rows, basis_rows, points[used], w[used], scale, rotation, translation, camera, has_depth, held
            )
        if not settings.perspective:
            # Alternation zig-zags along the pose/shape ambiguity; finish with joint Gauss-Newton steps.
            for _ in range(settings.joint_iterations):
                scale, rotation, translation, alpha = self._joint_step(
                    mean_rows, basis_rows, points[used], w[used], scale, rotation, translation, alpha, has_depth, held
                )
                if corr.contour:
                    self._slide_contours(ids, bary, used, points, corr, alpha, scale, rotation, translation, camera)
                    mean_rows, basis_rows = self._rows(ids[used], bary[used])
        vertices_model = (self.mean.reshape(-1) + self.basis @ alpha.astype(np.float32)).reshape(-1, 3)
        if settings.perspective:
            vertices = vertices_model @ rotation.T + translation
            projected = vertices @ camera.T
            image_xy = projected[:, :2] / projected[:, 2:3]
        else:
            vertices = scale * vertices_model @ rotation.T + translation
            image_xy = vertices[:, :2]
        landmark_xy = np.einsum("kj,kjc->kc", bary[used], image_xy[ids[used]])
        residual = float(np.linalg.norm(landmark_xy - points[used, :2], axis=1).mean())
        k_id = self.model.n_identity
        return FitResult(
            rotation=rotation,
            scale=float(scale) if not settings.perspective else 1.0,
            translation=translation,
            identity=alpha[:k_id],
            expression=alpha[k_id:],
            vertices=vertices.astype(np.float32),
            residual_px=residual,
            camera_matrix=camera if settings.perspective else None,
            vertex_ids=ids,
            weights=bary,
        )

    def _joint_step(
        self,
        mean_rows: np.ndarray,
        basis_rows: np.ndarray,
        target: np.ndarray,
        w: np.ndarray,
        scale: float,
        rotation: np.ndarray,
        translation: np.ndarray,
        alpha: np.ndarray,
        has_depth: bool,
        held: tuple[np.ndarray, np.ndarray],
    ) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
        """One Gauss-Newton step on (rotation, scale, translation, α) together, orthographic camera.

        Prediction s·(R X_k)[:d] + t[:d] with X_k = m_k + B_k α; a rotation update R <- exp([ω]x) R
        changes it by -s·[R X_k]x ω. Unknowns: ω (3), s (1), t (d), α (C); the prior acts on α only.
        """
        d = 3 if has_depth else 2
        shape = mean_rows + basis_rows @ alpha  # (K, 3) model frame
        rotated = shape @ rotation.T  # (K, 3)
        predicted = scale * rotated[:, :d] + translation[:d]
        residual = target[:, :d] - predicted
        k = len(shape)
        cross = np.zeros((k, 3, 3))  # -[R X]x
        x, y, z = rotated[:, 0], rotated[:, 1], rotated[:, 2]
        cross[:, 0, 1], cross[:, 0, 2] = z, -y
        cross[:, 1, 0], cross[:, 1, 2] = -z, x
        cross[:, 2, 0], cross[:, 2, 1] = y, -x
        j_rot = scale * cross[:, :d, :]
        j_scale = rotated[:, :d, None]
        j_trans = np.broadcast_to(np.eye(3)[:d], (k, d, 3))[:, :, :d]
        j_alpha = scale * np.einsum("ij,kjc->kic", rotation[:d], basis_rows)
        jacobian = np.concatenate([j_rot, j_scale, j_trans, j_alpha], axis=2)  # (K, d, 3 + 1 + d + C)
        row_weights = np.repeat(w, d).reshape(k, d)
        if has_depth:
            row_weights[:, 2] *= self.settings.depth_weight
        rows = jacobian.reshape(k * d, -1)
        rw = row_weights.reshape(-1)
        n_pose = 4 + d
        prior, centre = held
        damping = np.concatenate([np.full(n_pose, 1e-6), prior * scale**2])
        lhs = rows.T @ (rows * rw[:, None]) + np.diag(damping)
        rhs = rows.T @ (residual.reshape(-1) * rw)
        rhs[n_pose:] -= prior * scale**2 * (alpha - centre)  # gradient of the prior at the current α
        step = np.linalg.solve(lhs, rhs)
        omega = step[:3]
        angle = np.linalg.norm(omega)
        if angle > 1e-12:
            axis = omega / angle
            skew = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
            update = np.eye(3) + np.sin(angle) * skew + (1 - np.cos(angle)) * skew @ skew
            rotation = update @ rotation
        translation = translation.copy()
        translation[:d] += step[4 : 4 + d]
        return scale + step[3], rotation, translation, alpha + step[n_pose:]

    def _solve_shape(
        self,
        mean_rows: np.ndarray,
        basis_rows: np.ndarray,
        target: np.ndarray,
        w: np.ndarray,
        scale: float,
        rotation: np.ndarray,
        translation: np.ndarray,
        camera: np.ndarray,
        has_depth: bool,
        held: tuple[np.ndarray, np.ndarray],
    ) -> np.ndarray:
        """Closed-form α for a fixed pose (normal equations over the landmark rows); ``held``: the prior's
        diagonal and centre (see :meth:`fit`)."""
        if self.settings.perspective:
            # Fix each landmark's depth at its current value: f·X_c/Z + c is then linear in α.
            cam_mean = mean_rows @ rotation.T + translation
            depth = np.maximum(cam_mean[:, 2:3], 1e-6)
            focal = camera[[0, 1], [0, 1]]
            centre = camera[:2, 2]
            rot_basis = np.einsum("ij,kjc->kic", rotation[:2], basis_rows)  # (K, 2, C)
            jacobian = rot_basis * (focal / depth)[:, :, None]
            predicted = cam_mean[:, :2] * focal / depth + centre
            residual = target[:, :2] - predicted
        else:
            dims = 3 if has_depth else 2
            rot_basis = scale * np.einsum("ij,kjc->kic", rotation[:dims], basis_rows)
            predicted = scale * mean_rows @ rotation[:dims].T + translation[:dims]
            jacobian = rot_basis
            residual = target[:, :dims] - predicted
            if has_depth:
                # Landmark depth has an unknown offset: compare z around its weighted mean.
                z_jac = jacobian[:, 2, :] - np.average(jacobian[:, 2, :], axis=0, weights=w)
                z_res = residual[:, 2] - np.average(residual[:, 2], weights=w)
                jacobian = jacobian.copy()
                residual = residual.copy()
                jacobian[:, 2, :] = z_jac * np.sqrt(self.settings.depth_weight)
                residual[:, 2] = z_res * np.sqrt(self.settings.depth_weight)
        rows = jacobian.reshape(-1, jacobian.shape[-1])
        row_weights = np.repeat(w, jacobian.shape[1])
        # The prior is in model units (mm): scale it into pixels like the residuals.
        pixels_per_unit = scale if not self.settings.perspective else float(np.mean(focal / depth))
        prior = held[0] * pixels_per_unit**2
        lhs = rows.T @ (rows * row_weights[:, None]) + np.diag(prior)
        rhs = rows.T @ (residual.reshape(-1) * row_weights) + prior * held[1]
        return np.linalg.solve(lhs, rhs)

    def _slide_contours(
        self,
        ids: np.ndarray,
        bary: np.ndarray,
        used: np.ndarray,
        points: np.ndarray,
        corr: Correspondence,
        alpha: np.ndarray,
        scale: float,
        rotation: np.ndarray,
        translation: np.ndarray,
        camera: np.ndarray,
    ) -> None:
        """Re-assign each contour landmark to the candidate vertex projecting nearest to it (in place)."""
        for landmark, candidates in corr.contour.items():
            if not used[landmark]:
                continue
            flat = (candidates[:, None] * 3 + np.arange(3)).reshape(-1)
            model_points = (self.mean.reshape(-1)[flat] + self.basis[flat] @ alpha).reshape(-1, 3)
            if self.settings.perspective:
                cam = model_points @ rotation.T + translation
                xy = (cam @ camera.T)[:, :2] / (cam @ camera.T)[:, 2:3]
            else:
                xy = scale * model_points @ rotation[:2].T + translation[:2]
            best = candidates[int(np.argmin(np.linalg.norm(xy - points[landmark, :2], axis=1)))]
            ids[landmark] = best
            bary[landmark] = (1.0, 0.0, 0.0)


def _scaled_orthographic(model: np.ndarray, image: np.ndarray, w: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Affine camera by weighted linear least squares, then the nearest scaled rotation.

    Returns scale s, rotation R (3x3, model -> mesh frame) and translation t (z = 0) with
    image ≈ s · (R @ X)[:2] + t[:2].
    """
    homogeneous = np.column_stack([model, np.ones(len(model))])
    sw = np.sqrt(w)[:, None]
    affine, *_ = np.linalg.lstsq(homogeneous * sw, image * sw, rcond=None)  # (4, 2)
    a = affine[:3].T  # (2, 3)
    u, sigma, vt = np.linalg.svd(a, full_matrices=False)
    rows = u @ vt  # nearest matrix with orthonormal rows
    rotation = np.vstack([rows, np.cross(rows[0], rows[1])])
    if np.linalg.det(rotation) < 0:  # keep a proper rotation
        rotation[2] *= -1
    scale = float(sigma.mean())
    translation = np.zeros(3)
    translation[:2] = np.average(image - scale * model @ rotation[:2].T, axis=0, weights=w)
    return scale, rotation, translation


def _pnp(
    model: np.ndarray,
    image: np.ndarray,
    camera: np.ndarray,
    rotation: np.ndarray,
    translation: np.ndarray,
    iteration: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Perspective pose (R, t) by OpenCV's iterative PnP, seeded by the previous estimate."""
    import cv2

    if iteration == 0:
        # Seed: a frontal face at the distance its width implies.
        width_px = np.ptp(image[:, 0])
        width_mm = np.ptp(model[:, 0])
        depth = camera[0, 0] * width_mm / max(width_px, 1e-6)
        centre = image.mean(0)
        x = (centre[0] - camera[0, 2]) * depth / camera[0, 0]
        y = (centre[1] - camera[1, 2]) * depth / camera[1, 1]
        rotation, translation = FLIP_YZ.copy(), np.array([x, y, depth]) - FLIP_YZ @ model.mean(0)
    rvec, _ = cv2.Rodrigues(rotation)
    ok, rvec, tvec = cv2.solvePnP(
        model.astype(np.float64),
        image.astype(np.float64),
        camera,
        None,
        rvec=rvec,
        tvec=translation.reshape(3, 1).copy(),
        useExtrinsicGuess=True,
        flags=cv2.SOLVEPNP_ITERATIVE,
    )
    if not ok:
        return rotation, translation
    return cv2.Rodrigues(rvec)[0], tvec.reshape(3)
