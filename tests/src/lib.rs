//! Cluster end-to-end tests arrive with the packaging issue.
