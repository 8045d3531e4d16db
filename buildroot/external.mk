include $(sort $(wildcard $(BR2_EXTERNAL_DYNEXPORT_PATH)/package/*/*.mk))
