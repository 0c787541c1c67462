"""Presentation: what facerecon writes for a user, none of which a plugin needs.

* :mod:`.meshes` — OBJ (+MTL, texture), PLY and GLB writers, texture baking, atomic writes;
* :mod:`.frames` — the frames files are written in (head: pose removed, mm; image) and their transforms;
* :mod:`.preview` — ``preview.png`` and the segmentation overlay (the label palette);
* :mod:`.result` — the ``result.json`` schema;
* :mod:`.folder` — the per-input output folder and its layout.
"""
