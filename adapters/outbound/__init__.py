"""Outbound webhooks: every change of a customid's permissions, pushed to the app's endpoints.

`projections/announcements.py` records each change in the projector's transaction;
`publisher.py` appends it to the event log and makes its deliveries; `worker.py` delivers them
(`sender.py` signs and POSTs); `store.py` is where deliveries live (the read models' database,
shared by every host).
"""
