"""Self-deploy (`mode: "self"`): kuadeploy replacing its own container.

The running instance builds the new image like any app's, records a hand-off
(`SelfHandoffStarted`) and starts a transient container from the new image
(`transient.py`), which recreates the orchestrator's container on the new image
and brings the old one back when the new one does not verify. Whichever instance
starts next records the outcome (`decide.py`): success only by the new instance,
on its own baked GIT_SHA and image. See docs/self-deploy.md.
"""
