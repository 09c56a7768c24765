"""Video and image jobs: an HTTP job API (FastAPI) stores each upload in a content-addressed job store on
disk and queues a Celery task on Redis; Celery workers analyse it through the project's clients against
TorchServe (a worker host holds no model) and record progress, the answer or the error under the job's
id, exactly once per job however often the broker delivers the task."""
