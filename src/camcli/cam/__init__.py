"""Pure tensor functions: CAMs, maps back onto the image, boxes, overlays (SPEC sections 1-3).

No module here reads or writes files, prints, or picks a device: results are on the device of
the input tensors (connected components and dt-box run on the CPU with OpenCV). Modules:

- :mod:`~camcli.cam.pipeline`: top-k classes, class activation maps, normalisation.
- :mod:`~camcli.cam.upsample`: the preprocessing :class:`~camcli.cam.upsample.Geometry`,
  ``resize_maps``, ``upsample_to_images`` (maps in original-image pixels).
- :mod:`~camcli.cam.tencrop`: the official ten-crop evaluation.
- :mod:`~camcli.cam.boxes`: the paper's box rule, every component, IoU, ``boxes_for_maps``.
- :mod:`~camcli.cam.dtbox`: the authors' official ``dt_box`` rule and the tight/loose
  heuristic.
- :mod:`~camcli.cam.render`: colormaps, overlays and the caption grid.

Boxes are inclusive pixel boxes ``[x_min, y_min, x_max, y_max]`` (SPEC section 3), except the
raw ``(x, y, w, h)`` rectangles of :func:`camcli.cam.dtbox.dt_boxes`.
"""
