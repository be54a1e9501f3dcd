"""The one thing pyproject.toml cannot say without an "experimental" warning: the C extension.

The funnel engine's single pass (aggregator/analysis/funnel_kernel.c, docs/analytics.md). Optional:
without a C compiler the install still succeeds and funnels.py falls back to its numpy engine (same
answers, slower long funnels); tests/aggregator/analysis/test_kernel.py fails when it is missing.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "studyin_analytics.aggregator.analysis._funnel_kernel",
            sources=["aggregator/analysis/funnel_kernel.c"],
            extra_compile_args=[
                "-O2",
                "-Wall",
                "-Wextra",
                "-Wno-unused-parameter",
                "-Wno-missing-field-initializers",
            ],
            optional=True,
        )
    ]
)
