"""The pipeline stages, one module each: :mod:`.build` (the variant's model and its in-memory
outputs), :mod:`.save` (the artifact file), :mod:`.reload` (the artifact loaded and run in a
fresh process). Each is a function of what it needs, never of the runner:
:class:`deploycheck.runner.Runner` alone orders them and memoises them per session. A variant made
elsewhere is not built: it enters at reload (:func:`.save.made_elsewhere` takes its file in place)."""
