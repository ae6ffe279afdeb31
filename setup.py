"""rlops: a closed-loop, reinforcement-learning MLOps pipeline on TFX and TF-Agents."""
from setuptools import find_packages, setup

# Direct dependencies, pinned. requirements-py3*.lock pins the whole tree (`make lock`).
INSTALL_REQUIRES = [
    "tfx[kfp]==1.15.1",
    "tf-agents==0.19.0",
    "tensorflow==2.15.1",
    "tensorflow-probability==0.23.0",
    "apache-beam[gcp]==2.59.0",
    "numpy==1.26.4",
    "fastapi==0.103.2",
    "uvicorn==0.30.6",
    "uvloop==0.21.0",
    "httptools==0.6.4",
    "orjson>=3.11,<4",  # Log rows and the predict route's JSON; the lock files pin each.
    "functions-framework==3.8.3",
    "google-cloud-aiplatform==1.91.0",
    "google-cloud-bigquery>=3.41,<4",  # 3.47 needs Python 3.10; the lock files pin each
    "google-cloud-pubsub==2.36.0",
    "httpx==0.27.2",
    "matplotlib==3.9.2",
    "tqdm==4.67.1",
    # The newest setuptools that still ships pkg_resources, which TensorBoard 2.15 imports.
    "setuptools==81.0.0",
]
TEST_REQUIRES = [
    "pytest==8.3.3",
    "pytest-xdist==3.6.1",
    "hypothesis==6.122.3",
    "import-linter==2.1",
    "ruff==0.8.4",
]

setup(
    name="rlops",
    version="0.1.0",
    description="Contextual-bandit movie recommender with a closed MLOps loop on TFX and TF-Agents",
    python_requires=">=3.9,<3.11",
    packages=find_packages(include=["rlops*", "custom_components*", "tfx_pipeline*", "functions*",
                                    "cli*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
    entry_points={"console_scripts": ["rlops=cli.main:main"]},
)
