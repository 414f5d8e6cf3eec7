output "bucket" {
  description = "The data lake bucket."
  value       = aws_s3_bucket.this.id
}

output "target_url" {
  description = "Where godwit writes (target.url)."
  value       = "s3://${aws_s3_bucket.this.id}/${var.target_prefix}"
}

output "pipeline_url" {
  description = "The pipeline file: godwit run <pipeline_url>."
  value       = local.pipeline_url
}

output "pipeline_toml" {
  description = "The rendered pipeline file (no secrets: they are $${GODWIT_...} references)."
  value       = local.pipeline_toml
}

output "kms_key_arn" {
  description = "The customer-managed KMS key."
  value       = aws_kms_key.this.arn
}

output "sns_topic_arn" {
  description = "The events and alarms topic."
  value       = aws_sns_topic.events.arn
}

output "database_url_secret_arn" {
  description = "Secrets Manager secret holding the PostgreSQL URL."
  value       = aws_secretsmanager_secret.database_url.arn
}

output "redis_endpoint" {
  description = "Redis primary (or, in cluster mode, configuration) endpoint; null without Redis."
  value       = local.redis_on ? local.redis_host : null
}

output "redis_secret_arn" {
  description = "Secrets Manager secret with the Redis AUTH token and URL; null without Redis."
  value       = local.redis_on ? aws_secretsmanager_secret.redis[0].arn : null
}

output "ecs_cluster_arn" {
  description = "The ECS cluster."
  value       = aws_ecs_cluster.this.arn
}

output "batch_task_definition_arn" {
  description = "The batch task (godwit run PIPELINE --once); run it by hand with aws ecs run-task."
  value       = aws_ecs_task_definition.batch.arn
}

output "cdc_service_name" {
  description = "The CDC service; null when cdc_service is false."
  value       = var.cdc_service ? aws_ecs_service.cdc[0].name : null
}

output "shard_state_machine_arn" {
  description = "The sharded initial load's state machine; null when shard_count is 0."
  value       = local.shard_on ? aws_sfn_state_machine.shards[0].arn : null
}

output "lambda_function_name" {
  description = "The Lambda function; null without lambda_zip_path."
  value       = local.lambda_on ? aws_lambda_function.this[0].function_name : null
}

output "log_group_name" {
  description = "CloudWatch log group of every shape."
  value       = aws_cloudwatch_log_group.this.name
}

output "security_group_id" {
  description = "godwit's security group: allow it in the database's security group on the PostgreSQL port."
  value       = aws_security_group.godwit.id
}

output "task_subnet_ids" {
  description = "Subnets the tasks run in (for aws ecs run-task)."
  value       = var.private_subnet_ids
}
