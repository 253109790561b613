"""Packaging of syn_mp: the one place of its metadata.

The C extension ``syn_mp._native`` is built from csrc/ by cffi in API mode;
syn_mp/_build_native.py holds the builder (``ffibuilder``).
"""
import os

from setuptools import find_packages, setup

_HERE = os.path.dirname(os.path.abspath(__file__))


def _readme() -> str:
    path = os.path.join(_HERE, "README.md")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return f.read()
    return ""


setup(
    name="syn_mp",
    version="0.1.0",
    description="A shared-memory process registry and process-group manager for OS processes (a port of Erlang's Syn)",
    long_description=_readme(),
    long_description_content_type="text/markdown",
    license="MIT",
    classifiers=[
        "License :: OSI Approved :: MIT License",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Programming Language :: C",
        "Typing :: Typed",
    ],
    packages=sorted(set(["syn_mp"] + find_packages(include=["syn_mp", "syn_mp.*"]))),
    package_data={"syn_mp": ["py.typed"]},  # PEP 561: users' type checkers read syn_mp's hints
    python_requires=">=3.9",
    setup_requires=["cffi>=1.15"],
    cffi_modules=["syn_mp/_build_native.py:ffibuilder"],
    install_requires=[
        "cffi>=1.15",
        "msgpack>=1.0",
        "posix_ipc>=1.1",
        "psutil>=5.9",
    ],
    extras_require={
        "test": ["pytest", "hypothesis", "build", "twine", "cibuildwheel", "mypy>=2.4,<3; python_version >= '3.10'"],
        # the servers syn_mp.contrib integrates with, for its tests (./dev test installs them)
        "integrations": ["gunicorn>=21", "uvicorn>=0.30", "hypercorn>=0.16", "celery[redis]>=5.3", "redis>=4",
                         "fastapi"],
        # `syn-mp daemon --metrics HOST:PORT` (./dev test installs it)
        "metrics": ["prometheus_client>=0.17"],
        # the cluster on etcd (syn-mp daemon --etcd): aetcd, asyncio over etcd's gRPC API
        "etcd": ["aetcd>=1.0"],
        "bench": ["UltraDict", "redis", "matplotlib", "aetcd>=1.0"],
    },
    entry_points={
        "console_scripts": ["syn-mp=syn_mp.cli:main"],
    },
    zip_safe=False,
)
