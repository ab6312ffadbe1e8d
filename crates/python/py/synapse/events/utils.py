def format_event_for_client_v2(d):
    drop = ("auth_events", "prev_events", "hashes", "signatures", "depth", "origin", "prev_state")
    return {k: v for k, v in d.items() if k not in drop}


def format_event_for_client_v2_without_room_id(d):
    d = format_event_for_client_v2(d)
    d.pop("room_id", None)
    return d
