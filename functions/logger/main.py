"""Logger function: writes prediction logs and feedback to the warehouse.

Production: a Cloud Function on the Pub/Sub topic the endpoint and the Simulator
publish to (`rlops.log_sinks.PubSubSink`; entry point `log_records`), writing to
BigQuery with RLOPS_WAREHOUSE=bq://project.dataset. Locally: the same code
(`rlops.log_sinks.write_rows`) on a SQLite file, called in process by
`rlops.log_sinks.InProcessSink`, or served by functions-framework:

    RLOPS_WAREHOUSE=$PWD/rlops-work/warehouse.sqlite functions-framework \\
        --source functions/logger/main.py --target log_records --signature-type cloudevent \\
        --host 127.0.0.1 --port 8081

Delivery is at least once; rows are de-duplicated by request_id, so a redelivered
message changes nothing. A failure raises, so Pub/Sub redelivers the message.
"""
import json
import os

import flask
import functions_framework

from rlops import log_sinks

WAREHOUSE_ENV = "RLOPS_WAREHOUSE"


@functions_framework.cloud_event
def log_records(cloud_event) -> None:
  """Cloud Function entry point: a Pub/Sub message of prediction logs and feedback.

  A row the warehouse cannot store, or outside RLOPS_ROW_LIMITS (the served model's
  dimensions and ranges, `RowLimits`) where that is set, is refused alone: the others
  are written, and the refused rows are logged with their reasons. The message is then
  answered 422 with the reasons, not acknowledged, so that no refused row is lost:
  Pub/Sub redelivers it (its stored rows change nothing) and then moves it to the
  dead-letter topic `rlops deploy` gives the subscription; the endpoint's outbox sets
  the refused rows aside in its dead-letter file. A message that is not JSON of lists
  of rows is answered 400 with the reason, not acknowledged either (the outbox then
  delivers its rows one by one and sets the bad one aside). A failure to write
  raises, so Pub/Sub redelivers the message.
  """
  uri = os.environ.get(WAREHOUSE_ENV)
  if not uri:
    raise RuntimeError(f"{WAREHOUSE_ENV} is not set")
  try:
    message = log_sinks.decode_pubsub_event(cloud_event.data)
    log_sinks.check_message(message)
  except ValueError as error:
    print(json.dumps({"severity": "WARNING", "refused_message": str(error)[:2000]}))
    _refuse(400, {"error": f"not a log message: {error}"[:2000]})
  _, rejected = log_sinks.write_rows(message, uri, log_sinks.limits_from_env())
  if rejected:
    reasons = [entry["reason"] for entry in rejected]
    try:
      print(json.dumps({"severity": "WARNING", "rejected_rows": rejected}))
    except RecursionError:  # A row nested too deep to write again: its reason says so.
      print(json.dumps({"severity": "WARNING", "rejected_reasons": reasons}))
    _refuse(422, {"error": f"{len(rejected)} row(s) refused", "reasons": reasons})


def _refuse(status: int, answer: dict) -> None:
  """Answers the message `status` with `answer` as JSON: refused, not acknowledged."""
  flask.abort(flask.Response(json.dumps(answer), status=status, mimetype="application/json"))
