"""Face libraries shared by the built-in plugins: none of them is a plugin (no entry point), and no
plugin needs another plugin's entry point to use them.

* :mod:`.morphable` — morphable models: the record, the file formats, the user's catalogue, landmark
  correspondence and the landmark fitter;
* :mod:`.mediapipe_bundle` — locating and reading MediaPipe's face landmarker bundle, its canonical mesh
  and the calibrated iBUG-68 points on it;
* :mod:`.face_parsing` — CelebAMask-HQ label ids and per-region skin colours;
* :mod:`.onnx` — onnxruntime sessions (the execution-provider choice).
"""
