"""Steps 3-4 of the fine stage (``facerecon.plugins.sfs``): the albedo γ and the specular β on one solve's
``solver.Scene``, fitted on the medium surface and then a few steps after each depth update."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from facerecon.plugins.sfs import fused
from facerecon.plugins.sfs.lighting import shading_of_normals
from facerecon.plugins.sfs.operators import gaussian_blur, low_pass, masked_blur, relative_total_variation
from facerecon.plugins.sfs.optimisers import adam, float32_array, lbfgs

if TYPE_CHECKING:
    from facerecon.plugins.sfs.solver import Scene


class Reflectance:
    """Steps 3-4: the albedo γ (with its skin-colour and RTV priors) and the per-pixel specular β, fitted
    once on the medium surface and then a few steps after each depth update."""

    def __init__(self, scene: Scene, fused_pass: bool = True) -> None:
        """``fused_pass``: evaluate the albedo energy by ``fused.albedo_terms`` where it runs (float32 on
        the CPU); False: by autograd (the reference form, ``albedo_loss``)."""
        self.scene = scene
        options, image, shade0 = scene.options, scene.image, scene.shade0
        # Step 3: albedo. Its prior γ_avg is the skin's own colour around each sample: the image over the
        # smooth shading, averaged (σ ``albedo_sigma``) over the skin-coloured samples. That mean cannot
        # hold detail finer than σ, and it follows the albedo's slow changes (a tan, a flush, make-up) that
        # a region's single colour would leave to the depth as false creases. Where the colour is not the
        # skin's (pigment, hair over the forehead), the albedo starts from the image over the smooth shading.
        with torch.no_grad():
            ratio = ((image - options.specular_scale * scene.highlight0) / shade0.clamp(min=0.05)).clamp(0, 255)
            self.skin_albedo = masked_blur(
                ratio, scene.skin * (scene.mask & scene.measured).float(), options.albedo_sigma
            )
            start = scene.skin * self.skin_albedo + (1 - scene.skin) * torch.where(
                scene.measured, ratio, self.skin_albedo
            )
        self.albedo = start.clone().requires_grad_(True)
        self.specular = scene.highlight0
        self.fused = self.fused_inputs() if fused_pass and fused.available(image) else None
        # Before any depth step the normals are the smooth medium surface's, so at full resolution the
        # albedo would take up every wrinkle's shading; it is fitted to the blurred residual here and
        # refined at full resolution while the depth phases explain the detail.
        self.first_fit(options.albedo_blur)
        # Step 4: specular, from the residual.
        with torch.no_grad():
            # Highlights on skin are smooth at this scale: the initial specular is the blurred positive
            # residual (unblurred, it would swallow the bright side of every wrinkle). Highlights are
            # whitish, so they also leave the skin's chromaticity: only there may β0 be non-zero.
            residual = (image - self.albedo * shade0).mean(0, keepdim=True).clamp(min=0)
            self.beta0 = gaussian_blur(residual, options.specular_sigma)
            self.beta0 = self.beta0 * (1 - scene.skin) * (options.specular_model == "per-pixel")
        if options.specular_model == "per-pixel":
            self.specular = self.beta0.clone().requires_grad_(True)
            self.specular_optimiser = adam(self.specular, options.specular_lr)
        self.specular_steps(shade0, options.specular_iterations)
        self.depth_optimiser = adam(self.albedo, options.albedo_lr_depth)

    def first_fit(self, blur: float) -> None:
        """Step 3's fit on the medium surface: ``albedo_iterations`` L-BFGS iterations, or with
        ``albedo_optimizer = "adam"`` that many Adam steps (lr ``albedo_lr``, the seed's). Adam moves every
        sample by about lr per step however weak its gradient, and its 20 steps chased the blurred residual
        with blotches that the later full-rate steps never undid (the re-rendered photo 0.7-8 dB worse);
        L-BFGS's 8 iterations (at most 10 evaluations, half the time) change the albedo about half as much,
        and the carved detail is the same (README, "Speed")."""
        options, shade0 = self.scene.options, self.scene.shade0
        if options.albedo_iterations <= 0:
            return
        if options.albedo_optimizer == "adam":
            steps = adam(self.albedo, options.albedo_lr)
            for _ in range(options.albedo_iterations):
                steps.zero_grad()
                self.albedo_loss(shade0, self.specular, blur).backward()
                steps.step()
            return
        search = lbfgs(self.albedo, options.albedo_iterations)

        def closure() -> Any:  # the loss tensor (torch's stubs say float)
            search.zero_grad()
            loss = self.albedo_loss(shade0, self.specular, blur)
            loss.backward()
            return loss

        search.step(closure)

    def fused_inputs(self) -> fused.AlbedoInputs:
        """What ``fused.albedo_terms`` reads of this scene and prior."""
        scene, options = self.scene, self.scene.options
        array = float32_array
        return fused.AlbedoInputs(
            image=array(scene.image),
            measured=array(scene.measured.float()),
            mask=array(scene.m),
            coarse_mask=array(scene.coarse_m),
            skin_weight=array(1 + options.skin_prior_boost * scene.skin),
            skin_albedo=array(self.skin_albedo),
            count=float(scene.count),
            coarse_count=float(scene.coarse_count),
            w_avg=float(scene.w_avg),
            w_rtv=float(scene.w_rtv),
            rtv_sigma=float(options.rtv_sigma),
            specular_scale=float(options.specular_scale),
            threads=options.pass_threads(),
        )

    def albedo_loss(self, shade: Tensor, specular: Tensor, blur: float = 0.0) -> Tensor:
        """E(γ) of step 3 for the shading (3, H, W) and specular (1, H, W) given, with the residual's
        low-pass (σ ``blur``) instead of the residual when ``blur`` > 0."""
        if self.fused is not None:  # the same energy, its gradient written out (``fused``)
            return fused.albedo_terms(self.albedo, self.fused, shade, specular, blur)
        scene, options = self.scene, self.scene.options
        residual = (self.albedo * shade + options.specular_scale * specular - scene.image) * scene.measured
        if blur > 0:
            data = scene.coarse_mean((low_pass(residual * scene.m, blur, 2) ** 2).sum(0))
        else:
            data = scene.masked_mean((residual**2).sum(0))
        # Where the colour is the skin's, the albedo is the skin colour (shading explains the rest); where
        # it is not (pigment), the albedo is free to follow the image.
        weight = 1 + options.skin_prior_boost * scene.skin
        prior = scene.masked_mean(weight * ((self.albedo - self.skin_albedo) ** 2).sum(0))
        rtv: Tensor | float = 0.0
        if scene.w_rtv:
            rtv = scene.coarse_mean(relative_total_variation(self.albedo / 255.0, options.rtv_sigma) ** 2)
        return data + scene.w_avg * prior + scene.w_rtv * rtv

    def specular_steps(self, shade: Tensor, steps: int) -> None:
        scene, options = self.scene, self.scene.options
        if options.specular_model != "per-pixel":
            return  # the lobe model has no per-pixel specular
        for _ in range(steps):
            self.specular_optimiser.zero_grad()
            residual = (
                self.albedo.detach() * shade + options.specular_scale * self.specular - scene.image
            ) * scene.measured
            data = scene.masked_mean((1 - scene.skin) * (residual**2).sum(0))
            prior = scene.masked_mean(((self.specular - self.beta0) ** 2).sum(0))
            (data + options.specular_weight * prior).backward()
            self.specular_optimiser.step()
            with torch.no_grad():
                self.specular.clamp_(min=0)

    def follow(self, normals: Tensor) -> None:
        """A few albedo and specular steps for the current normals (the depth phases alternate with them)."""
        scene = self.scene
        shade = shading_of_normals(normals, scene.sh)
        highlight = scene.highlight(normals, self.specular)
        for _ in range(2):
            self.depth_optimiser.zero_grad()
            self.albedo_loss(shade, highlight).backward()
            self.depth_optimiser.step()
        self.specular_steps(shade, 2)
