# Custom Dataflow worker image: Beam SDK + tf.Transform + this project, preinstalled, so
# workers start without pip-installing TensorFlow (use with --sdk_container_image).
#
#   gcloud builds submit --tag REGION-docker.pkg.dev/PROJECT/REPO/ga360-preprocess:0.1.0 .
#   ./run_dataflow.sh --runner DataflowRunner ... \
#       --sdk_container_image REGION-docker.pkg.dev/PROJECT/REPO/ga360-preprocess:0.1.0
FROM apache/beam_python3.11_sdk:2.77.0
WORKDIR /opt/ga360-wals-recommender
COPY setup.py ./
COPY preprocess ./preprocess
COPY trainer ./trainer
COPY schemas ./schemas
RUN pip install --no-cache-dir .
