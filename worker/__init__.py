"""ScanStream: a Kafka-native worker that turns DICOM scan events into findings with evidence."""

__version__ = "0.1.0"
