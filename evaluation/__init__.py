"""facerecon's measuring instruments, for users' data as for the benchmarks (``facerecon eval ...``).

One module per command: :mod:`.landmarks` (NME of every stage's 68 landmarks on annotated photos),
:mod:`.rgbd` (depth error against a registered depth sensor), :mod:`.mesh` (the MICC / NoW scan-to-mesh
protocol); :mod:`.annotations` reads the annotations; :mod:`.charts` draws the figures with Pillow;
:mod:`.command` is the ``eval`` sub-command. The shared alignment maths is in ``facerecon.geometry``.
Like the CLI, this package meets the stages through the host (``facerecon.kernel``), never a plugin.
"""

from facerecon.evaluation.annotations import (
    OUTER_EYE_CORNERS,
    AnnotatedPhoto,
    annotated_face_index,
    find_annotations,
    nme,
    nme_box,
    read_coco,
    read_pts,
    shared_data_dir,
)

__all__ = [
    "OUTER_EYE_CORNERS",
    "AnnotatedPhoto",
    "annotated_face_index",
    "find_annotations",
    "nme",
    "nme_box",
    "read_coco",
    "read_pts",
    "shared_data_dir",
]
