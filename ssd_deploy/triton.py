"""``python -m ssd_deploy.triton --engine ENGINE --output model_repository/``: write a Triton model
repository for an ssd_deploy engine. The implementation lives in :mod:`ssd_deploy.serve.triton`."""

from .serve.triton import RepoOptions, TritonError, check_repository, engine_facts, generate, main

__all__ = ["RepoOptions", "TritonError", "check_repository", "engine_facts", "generate", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
