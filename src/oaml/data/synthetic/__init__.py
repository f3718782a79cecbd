"""Built-in synthetic face dataset for the demo, the tests and the benchmarks (``oaml make-synthetic``).

Modules, in dependency order:

* :mod:`~oaml.data.synthetic.params`: :class:`FaceParams` (one identity), :class:`Expression` (one image) and
  the style enums;
* :mod:`~oaml.data.synthetic.pen`: the :class:`~oaml.data.synthetic.pen.Pen` that draws canonical-frame
  geometry through the pose onto a supersampled canvas;
* :mod:`~oaml.data.synthetic.drawing`: the background and the face, part by part;
* :mod:`~oaml.data.synthetic.sampling`: random identities and random images of them;
* :mod:`~oaml.data.synthetic.dataset`: :func:`make_synthetic`, which writes the folder (layout there).
"""

from oaml.data.synthetic.dataset import FORMAT_VERSION, SyntheticSpec, SyntheticSummary, make_synthetic
from oaml.data.synthetic.params import BeardStyle, Expression, FaceParams, GlassesStyle, HairStyle
from oaml.data.synthetic.sampling import render_face, render_identity_params

__all__ = [
    "FORMAT_VERSION",
    "BeardStyle",
    "Expression",
    "FaceParams",
    "GlassesStyle",
    "HairStyle",
    "SyntheticSpec",
    "SyntheticSummary",
    "make_synthetic",
    "render_face",
    "render_identity_params",
]
