"""The MQTT layer: the runtime's connection (``link``), plain clients for tools (``client``), and the one
module that touches paho-mqtt's internals (``_paho``)."""
