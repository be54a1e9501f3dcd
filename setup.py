"""The one thing pyproject.toml cannot say without an "experimental" warning: the C extensions.

The analysis engine's compiled passes (aggregator/analysis/*_kernel.c, loaded by kernels.py;
docs/analytics.md). Optional: without a C compiler the install still succeeds and the engine falls back
to numpy (same answers, slower); tests/aggregator/analysis/test_kernel.py fails when they are missing.
"""

from setuptools import Extension, setup

FLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]

setup(
    ext_modules=[
        Extension(
            f"studyin_analytics.aggregator.analysis._{name}_kernel",
            sources=[f"aggregator/analysis/{name}_kernel.c"],
            extra_compile_args=FLAGS,
            optional=True,
        )
        for name in ("funnel", "retention")
    ]
)
