SELECT queue FROM queue_pauses
