"""Regressor ``3dmm-fit``: fits a morphable model (pose + identity + expression) to the detector's
landmarks by alternating regularised linear least squares (:mod:`facerecon.facelib.morphable.fitting`).

Works with any detector scheme the model has a correspondence for: iBUG-68 through the model's own
map (jaw line sliding on the contour), MediaPipe-478 through a map derived automatically per model
(:mod:`facerecon.facelib.morphable.correspondence`), using MediaPipe's landmark depth as well.
It is the ``auto`` regressor whenever a model is configured in the model catalogue.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facerecon.facelib.morphable import catalog, correspondence
from facerecon.facelib.morphable.fitting import Correspondence, FitResult, FitSettings, LandmarkFitter
from facerecon.facelib.morphable.model import MorphableModel
from facerecon.kernel.contract import IBUG68, CoarseResult, Face, LandmarkMap, Mesh, Registrar, hookimpl
from facerecon.kernel.contract.errors import InputError
from facerecon.kernel.contract.images import check_image

CAMERAS = ("orthographic", "perspective")


@dataclass(frozen=True)
class FitOptions:
    """Options of ``3dmm-fit`` (``[options.regressor.3dmm-fit]``).

    model: a model catalogue name or a model file (default: the catalogue's default model).
    expressions: a separate expression-basis file for ``model`` given as a path (e.g. Exp_Pca.bin).
    identity_components, expression_components: how many leading components to fit (seed: 80 / 64).
    iterations: pose/shape alternations.
    identity_prior, expression_prior: regularisation: the squared landmark error in mm worth one unit of
        (coefficient / std)²; lower trusts the landmarks more: the 2D landmark error drops while the
        3D shape gets worse (tests/test_fitting.py measures both).
    camera: "orthographic" (scaled orthographic; mesh in pixels) or "perspective" (pinhole with
        ``focal_length`` pixels, default 1.2 x the longer image side; mesh in camera-frame mm).
    landmark_depth_weight: weight of the detector's landmark depth (MediaPipe's z) against x and y;
        0 fits 2D only. Orthographic camera only.
    contour_weight: weight of the iBUG jaw-line landmarks, which slide along the model's contour.
    landmark_model: MediaPipe's .task bundle (its canonical face places MediaPipe landmarks on the model).
    """

    model: str | None = None
    expressions: Path | None = None
    identity_components: int = 80
    expression_components: int = 64
    iterations: int = 5
    identity_prior: float = 4.0
    expression_prior: float = 2.0
    camera: str = "orthographic"
    focal_length: float | None = None
    landmark_depth_weight: float = 0.5
    contour_weight: float = 0.5
    landmark_model: Path | None = None

    def __post_init__(self) -> None:
        if self.camera not in CAMERAS:
            raise ValueError(f"camera must be one of {', '.join(CAMERAS)}, got {self.camera!r}")
        if self.focal_length is not None and not 0 < self.focal_length < math.inf:
            raise ValueError(f"focal_length must be a positive number of pixels, got {self.focal_length}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        for name in ("identity_components", "expression_components"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("identity_prior", "expression_prior", "landmark_depth_weight", "contour_weight"):
            if not 0 <= getattr(self, name) < math.inf:  # (NaN too)
                raise ValueError(f"{name} must be finite and >= 0, got {getattr(self, name)}")


class MorphableModelFitter:
    """The stage: one model, one fitter, correspondences built once per landmark scheme."""

    def __init__(self, options: FitOptions, device: str = "cpu") -> None:
        self.options = options
        entry = catalog.resolve(options.model, options.expressions)
        full = catalog.load(entry)
        self.model: MorphableModel = full.truncated(options.identity_components, options.expression_components)
        self.fitter = LandmarkFitter(
            self.model,
            FitSettings(
                iterations=options.iterations,
                identity_prior=options.identity_prior,
                expression_prior=options.expression_prior,
                depth_weight=options.landmark_depth_weight if options.camera == "orthographic" else 0.0,
                perspective=options.camera == "perspective",
                focal_length=options.focal_length,
            ),
        )
        self._correspondences: dict[str, Correspondence] = {}
        self._maps: dict[str, LandmarkMap] = dict(self.model.landmark_maps)

    def correspondence(self, scheme: str) -> Correspondence:
        if scheme not in self._correspondences:
            canonical = None
            if scheme.startswith("mediapipe"):
                canonical = _canonical_face(self.options.landmark_model)
            try:
                corr = correspondence.for_scheme(
                    self.model, scheme, canonical=canonical, contour_weight=self.options.contour_weight
                )
            except Exception as exc:
                raise InputError(f"3dmm-fit cannot use {scheme!r} landmarks with this model: {exc}") from None
            self._correspondences[scheme] = corr
            if scheme == correspondence.MEDIAPIPE478:  # meshes carry it, so later stages can use it
                self._maps[scheme] = LandmarkMap(scheme, corr.vertex_ids, corr.weights)
        return self._correspondences[scheme]

    def regress(self, image: np.ndarray, face: Face) -> CoarseResult:
        return self.regress_with_identity(image, face, None)

    def regress_with_identity(self, image: np.ndarray, face: Face, identity: np.ndarray | None) -> CoarseResult:
        """As :meth:`regress`, the identity coefficients held at ``identity`` (the ``"identity"`` parameter
        of earlier results; None fits them too): one identity for every frame of a video."""
        image = check_image(image)
        marks = face.landmarks
        corr = self.correspondence(marks.scheme)
        if len(corr.vertex_ids) != len(marks.points):
            raise InputError(
                f"{marks.scheme!r} landmarks: expected {len(corr.vertex_ids)} points, got {len(marks.points)}"
            )
        height, width = image.shape[:2]
        # A detector without depth (dlib) gives z = 0: fitting to those zeros flattened the face (depth /
        # width 0.10-0.20 instead of the model's ~0.8); only measured depth is fitted.
        if identity is not None and np.shape(identity) != (self.model.n_identity,):
            raise InputError(f"3dmm-fit: identity must be ({self.model.n_identity},), got {np.shape(identity)}")
        fit = self.fitter.fit(marks.points if marks.has_depth else marks.xy, corr, (width, height), identity)
        perspective = fit.camera_matrix is not None
        mesh = Mesh(
            vertices=fit.vertices,
            triangles=self.model.triangles,
            topology=self.model.topology,
            uvs=self.model.uvs,
            landmark_maps=self._maps,
            units="mm" if perspective else "px",
            camera_matrix=fit.camera_matrix,
        )
        mesh = self._with_fitted_jaw(mesh, marks.scheme, marks.xy, fit)
        return CoarseResult(
            mesh=mesh,
            rotation=fit.rotation,
            translation=fit.translation,
            scale=fit.scale,
            parameters={
                "identity": fit.identity,
                "expression": fit.expression,
                "residual_px": np.array([fit.residual_px]),
            },
        )

    def _with_fitted_jaw(self, mesh: Mesh, scheme: str, points: np.ndarray, fit: FitResult) -> Mesh:
        """The mesh's iBUG-68 map for this image: the jaw line (iBUG 1-17) has no fixed vertex on models
        like the SFM, so it is the contour vertex on this face's silhouette — as slid by the fit for
        68-point detectors, or, for MediaPipe, the contour vertex projecting nearest to the jaw point
        that MediaPipe's own landmarks give (the landmark-mesh iBUG-68 map)."""
        base = self.model.landmark_maps.get(IBUG68)
        if base is None or not self.model.contours:
            return mesh
        ids, weights = base.vertex_ids.copy(), base.weights.copy()
        jaw = list(correspondence.JAW_RIGHT + correspondence.JAW_LEFT)
        if scheme == IBUG68 and fit.vertex_ids is not None and fit.weights is not None:
            ids[jaw], weights[jaw] = fit.vertex_ids[jaw], fit.weights[jaw]
        elif scheme.startswith("mediapipe"):
            from facerecon.facelib.mediapipe_bundle import ibug68_on_canonical

            # iBUG jaw point k is a blend of three MediaPipe points (the landmark-mesh map); each of those
            # sits on this model's surface (the derived MediaPipe map): blend their main vertices. Where
            # a MediaPipe point is off the model, use the contour vertex nearest to the jaw point instead.
            canon_ids, canon_weights = ibug68_on_canonical()
            mp_map = self._maps.get(correspondence.MEDIAPIPE478)
            jaw_points = np.einsum("kj,kjc->kc", canon_weights[jaw], points[canon_ids[jaw]])
            projected = mesh.project(np.asarray(mesh.vertices, np.float64))
            for k, target in zip(jaw, jaw_points, strict=True):
                sources = canon_ids[k]
                if mp_map is not None and mp_map.valid[sources].all():
                    main = mp_map.weights[sources].argmax(axis=1)
                    ids[k] = mp_map.vertex_ids[sources, main]
                    weights[k] = canon_weights[k]
                else:
                    side = self.model.contours["right" if k in correspondence.JAW_RIGHT else "left"]
                    ids[k] = side[int(np.argmin(np.linalg.norm(projected[side] - target, axis=1)))]
                    weights[k] = (1.0, 0.0, 0.0)
        else:
            return mesh
        maps = dict(mesh.landmark_maps)
        maps[IBUG68] = LandmarkMap(IBUG68, ids, weights)
        return dataclasses.replace(mesh, landmark_maps=maps)


def _canonical_face(bundle_path: Path | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MediaPipe's canonical face (y up, z to the viewer, cm) and the iBUG-68 points on it."""
    from facerecon.facelib.mediapipe_bundle import canonical_face, ibug68_on_canonical, locate_bundle

    canonical = canonical_face(locate_bundle(bundle_path))
    ids, weights = ibug68_on_canonical()
    return canonical.vertices.astype(np.float64), ids, weights.astype(np.float64)


def _model_configured() -> bool:
    return catalog.is_configured()


def _mesh_units(options: FitOptions) -> tuple[str, ...]:
    """Pixels for the scaled orthographic camera, millimetres + camera_matrix for the perspective one."""
    return ("mm",) if options.camera == "perspective" else ("px",)


@hookimpl
def facerecon_register_stages(registry: Registrar) -> None:
    registry.register(
        "regressor",
        "3dmm-fit",
        MorphableModelFitter,
        options=FitOptions,
        summary="fits a 3D morphable model (BFM, SFM, ...) to the landmarks: pose + identity + expression",
        license_note="the model's own licence (BFM, SFM: non-commercial)",
        priority=10,
        available=_model_configured,
        devices=("cpu",),  # any scheme the model has a correspondence for (known when it loads)
        mesh_units=_mesh_units,
        reads="landmarks",  # a remote regressor is sent no pixel
    )
