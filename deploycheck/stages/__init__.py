"""The pipeline stages, one module each: :mod:`.build` (the variant's model and its in-memory
outputs), :mod:`.save` (the artifact file), :mod:`.reload` (the artifact loaded and run in a
fresh process). :class:`deploycheck.runner.Runner` memoises them per session."""
