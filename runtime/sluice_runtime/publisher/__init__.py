"""The publisher role: rxtx batches on ``POST /in`` become Elasticsearch/OpenSearch documents via ``_bulk``."""
