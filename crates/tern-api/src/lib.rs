//! tern-api: The flespi REST API and the REST-over-MQTT bridge
