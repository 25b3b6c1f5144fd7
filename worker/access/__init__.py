"""Who may read what: store profiles (memory types, their collections and owner fields,
scope filters) and the tenant policy (broker users to the owners they may read)."""
