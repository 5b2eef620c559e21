"""Board profiles (``devices.profiles``, ``devices.detect``) and simulated devices (sensors, cameras, fleets,
recordings). The serving core reads the profiles only; the simulators are clients of the runtime and are
imported from their own modules (``devices.sensors``, ``devices.cameras``, ...)."""
