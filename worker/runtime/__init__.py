"""Kafka at the edge: clients, topics, the consumer loop and the publisher."""
