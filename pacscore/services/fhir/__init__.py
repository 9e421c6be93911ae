"""FHIR R4 read API for the EMR (issue 16.6): ImagingStudy, Patient, ServiceRequest,
Endpoint and the CapabilityStatement, mounted under ``/fhir`` on the DICOMweb port."""

from .app import FHIR_JSON, create_fhir_app

__all__ = ["FHIR_JSON", "create_fhir_app"]
