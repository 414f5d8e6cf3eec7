# godwit's JSON log lines, from every shape (ECS tasks, the service, the Lambda function):
# {"timestamp", "level", "target", "fields": {"message", "pipeline", "event_type", "details"}}.
resource "aws_cloudwatch_log_group" "this" {
  name              = local.log_group
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = local.tags
}

locals {
  # One metric and one alarm per event worth waking someone for; each event's log line carries
  # fields.event_type (README, "Logs").
  alarm_events = {
    "memory.pressure" = "godwit buffered more than [limits] memory and spilled or paused (README, Memory)"
    "table.error"     = "a table went into Table error; godwit status names the reason and the remedy"
    "cdc.lag"         = "commits reach godwit later than [notify] cdc_lag_threshold"
    "slot.unhealthy"  = "the replication slot is gone or lost WAL: CDC stopped (docs/troubleshooting.md)"
    "task.failed"     = "a run failed (exit 1); the next run resumes"
  }
  metric_namespace = "godwit"
}

resource "aws_cloudwatch_log_metric_filter" "event" {
  for_each       = local.alarm_events
  name           = "${local.prefix}-${replace(each.key, ".", "-")}"
  log_group_name = aws_cloudwatch_log_group.this.name
  pattern        = "{ $.fields.event_type = \"${each.key}\" }"

  metric_transformation {
    name          = "${replace(each.key, ".", "_")}_events"
    namespace     = local.metric_namespace
    value         = "1"
    default_value = "0"
    unit          = "Count"
  }
}

resource "aws_cloudwatch_metric_alarm" "event" {
  for_each            = local.alarm_events
  alarm_name          = "${local.prefix}-${replace(each.key, ".", "-")}"
  alarm_description   = "godwit ${var.name}: ${each.value}"
  namespace           = local.metric_namespace
  metric_name         = aws_cloudwatch_log_metric_filter.event[each.key].metric_transformation[0].name
  statistic           = "Sum"
  period              = var.alarm_period_seconds
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.events.arn]
  ok_actions          = [aws_sns_topic.events.arn]
  tags                = local.tags
}

# The CDC service stopped being healthy often enough for ECS to replace its task: fewer running
# tasks than wanted.
resource "aws_cloudwatch_metric_alarm" "service_not_running" {
  count               = var.cdc_service ? 1 : 0
  alarm_name          = "${local.prefix}-cdc-service-not-running"
  alarm_description   = "godwit ${var.name}: the CDC service has no running task (health check failing or the task exits)"
  namespace           = "ECS/ContainerInsights"
  metric_name         = "RunningTaskCount"
  statistic           = "Minimum"
  period              = 300
  evaluation_periods  = 2
  threshold           = 1
  comparison_operator = "LessThanThreshold"
  treat_missing_data  = "breaching"
  dimensions = {
    ClusterName = aws_ecs_cluster.this.name
    ServiceName = aws_ecs_service.cdc[0].name
  }
  alarm_actions = [aws_sns_topic.events.arn]
  ok_actions    = [aws_sns_topic.events.arn]
  tags          = local.tags
}
