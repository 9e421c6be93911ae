"""Who may use the doors and what they did: bearer tokens (:mod:`.tokens`), the AE
allow-list and the audit trail (:mod:`.security`), and the access checks and error
statuses the doors share (:mod:`.access`)."""
