"""Presentation: what facerecon writes for a user, none of which a plugin needs.

* :mod:`.meshes` — OBJ (+MTL, texture), PLY and GLB writers, atomic writes;
* :mod:`.texture` — the photo unwrapped into a UV layout (visibility-aware, mirror fill), xatlas UVs;
* :mod:`.uv_maps` — the fine detail as tangent-space normal and displacement maps of the medium mesh;
* :mod:`.final_stage` — ``final.*`` (medium mesh + albedo + detail maps) and the decimated fine mesh;
* :mod:`.frames` — the frames files are written in (head: pose removed, mm; image) and their transforms;
* :mod:`.preview` — ``preview.png`` and the segmentation overlay (the label palette);
* :mod:`.result` — the ``result.json`` schema;
* :mod:`.folder` — the per-input output folder and its layout.
"""
