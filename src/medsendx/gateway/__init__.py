"""The edge gateway service: DICOM receiver, drop folders, pipeline workers, delivery,
health and metrics. ``GatewayService`` (service.py) ties the parts together."""
