"""Airflow hooks: they own the Connections and build the library's clients from them."""
