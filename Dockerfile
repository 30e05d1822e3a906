# The alma-regen Airflow image: the official Airflow 3.3.2 image plus our pinned
# requirements (providers, modular CASA, boto3, ...) and the alma_regen package.
#
#   docker build -t alma-regen-airflow:latest .
#   docker compose up -d            (docker-compose.yaml uses this image)
FROM apache/airflow:3.3.2-python3.11

USER root
# CASA's C++ libraries need these at run time (the official image is Debian);
# bubblewrap is the sandbox every CASA child (delivery code included) runs in.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 libfontconfig1 libxrender1 libsm6 libxext6 bubblewrap \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
RUN mkdir -p /opt/alma/work /opt/alma-regen && chown -R airflow:0 /opt/alma /opt/alma-regen

USER airflow
WORKDIR /opt/alma-regen
# Dependencies first (a cached layer while only the code changes).
COPY --chown=airflow:0 requirements.txt constraints.txt ./
RUN pip install --no-cache-dir "apache-airflow==3.3.2" -r requirements.txt -c constraints.txt
# The library, the plugin (entry point `airflow.plugins`) and the `alma-regen` command: the
# product only; the developer tools (devtools/) stay out of the image. setup.cfg writes the
# build's egg-info into include/, off sys.path: Airflow sees the plugin's entry point once.
COPY --chown=airflow:0 pyproject.toml setup.cfg README.md ./
COPY --chown=airflow:0 plugins ./plugins
COPY --chown=airflow:0 include ./include
RUN pip install --no-cache-dir --no-deps -e .
COPY --chown=airflow:0 dags /opt/airflow/dags

# Optional: a pipeline CASA from an ALMA pipeline release (README, "A pipeline CASA").
# Put the release (.tar.gz, source tree or wheel) into pipeline-release/ and build with
#   docker build --build-arg PIPELINE_RELEASE=alma-pipeline-2025.1.1.61.tar.gz -t alma-regen-airflow .
# The layer (~400 MB: the pipeline's own dependencies, not a second CASA) is built into the
# image and registered in the image's registry file; without the argument that file lists
# no extra CASA. The release is bind-mounted, not copied: it does not stay in the image.
ARG PIPELINE_RELEASE=""
RUN --mount=type=bind,source=pipeline-release,target=/tmp/pipeline-release \
    if [ -n "$PIPELINE_RELEASE" ]; then \
      alma-regen casa-versions add-pipeline "/tmp/pipeline-release/$PIPELINE_RELEASE" \
        --layers /opt/alma-regen/casa-layers --registry /opt/alma-regen/casa-registry.json \
      && rm -rf /home/airflow/.cache/pip; \
    else echo '{"installs": []}' > /opt/alma-regen/casa-registry.json; fi

# CASA never touches the network: the site config points measurespath at the casadata
# package and turns auto-updates off. ALMA_REGEN_INCLUDE is where the CASA-side scripts live.
ENV ALMA_REGEN_INCLUDE=/opt/alma-regen/include \
    CASASITECONFIG=/opt/alma-regen/include/casa/casasiteconfig.py \
    ALMA_REGEN_WORKDIR=/opt/alma/work \
    ALMA_REGEN_CASA_REGISTRY=/opt/alma-regen/casa-registry.json \
    AIRFLOW__CORE__LOAD_EXAMPLES=False
WORKDIR /opt/airflow
